#!/usr/bin/env python3
"""Convert a text corpus once to TFRecord shards that TensorFlow reads natively (no Python JSON
parsing while training), as many shards as you like so that every host of a slice reads its own.

Input: any TEXT_FILE_PATTERN format (plain text, .jsonl with a "text" field, .tfrecord; .gz).
Output: OUTPUT_DIR/text-NNNNN-of-MMMMM.tfrecord, tf.Example with a bytes feature "text",
documents dealt out round-robin. Shards are written under temporary names and renamed when all
are complete. E.g.
  scripts/text_to_tfrecord.py --input='/data/crawl/*.jsonl.gz' --output_dir=/data/crawl-tfrecord --num_shards=256
then train with --gin.TEXT_FILE_PATTERN="'/data/crawl-tfrecord/*.tfrecord'".
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from t5pod.data import text_sources  # noqa: E402


def example(text: bytes) -> bytes:
    feature = {"text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="file pattern of the corpus")
    parser.add_argument("--output_dir", required=True, help="folder for the shards (must not hold any yet)")
    parser.add_argument("--num_shards", type=int, default=16, help="number of output files (>= number of hosts)")
    parser.add_argument("--paragraphs", action="store_true", help="plain text: a document per blank-line block")
    args = parser.parse_args(argv)
    if args.num_shards < 1:
        parser.error(f"--num_shards is {args.num_shards}; it must be at least 1.")
    try:
        files = text_sources.match_files(args.input)
    except text_sources.TextFileError as error:
        parser.error(str(error))
    names = [
        os.path.join(args.output_dir, f"text-{i:05d}-of-{args.num_shards:05d}.tfrecord") for i in range(args.num_shards)
    ]
    if tf.io.gfile.exists(args.output_dir) and tf.io.gfile.glob(os.path.join(args.output_dir, "text-*.tfrecord")):
        parser.error(f"{args.output_dir} already holds text-*.tfrecord shards; choose a new --output_dir.")
    tf.io.gfile.makedirs(args.output_dir)
    writers = [tf.io.TFRecordWriter(name + ".tmp") for name in names]
    count = 0
    for count, document in enumerate(text_sources.text_dataset(files, args.paragraphs).as_numpy_iterator(), 1):
        writers[(count - 1) % args.num_shards].write(example(document["text"]))
    for writer in writers:
        writer.close()
    for name in names:
        tf.io.gfile.rename(name + ".tmp", name, overwrite=False)
    print(f"{count} documents from {len(files)} file(s) -> {args.num_shards} shards in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
