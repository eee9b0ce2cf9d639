"""One process of the file-sharding test: reads its shard of a text task's source through seqio's
own Task.get_dataset and prints the files it opened and the documents it got, as JSON.

usage: text_shard_worker.py PATTERN INDEX NUM_SHARDS OPENED_LOG
"""

import json
import sys

import seqio
import tensorflow as tf

from t5pod.data import text_sources

pattern, index, num_shards, opened_log = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
read_documents = text_sources.documents


def logged_documents(path, *args):
    """Each file the pipeline opens is written to OPENED_LOG when it is opened."""
    with tf.control_dependencies([tf.print(path, output_stream=f"file://{opened_log}")]):
        path = tf.identity(path)
    return read_documents(path, *args)


text_sources.documents = logged_documents
probe = seqio.Task(
    "text_shard_probe",
    source=text_sources.TextFileSource(pattern, validation_fraction=0.01),
    preprocessors=[],
    output_features={"text": seqio.Feature(seqio.PassThroughVocabulary(1), dtype=tf.string, rank=0)},
)
dataset = probe.get_dataset(
    sequence_length=None, split="train", shuffle=False, num_epochs=1, shard_info=seqio.ShardInfo(index, num_shards)
)
texts = [x["text"].decode() for x in dataset.as_numpy_iterator()]
with open(opened_log) as f:
    opened = sorted({line.strip() for line in f if line.strip()})
print(json.dumps({"opened": opened, "texts": texts}))
