"""Everything about input data: seqio pipelines, pretraining objectives, text sources,
vocabularies, the demo corpus, mixing rates, GLUE/SuperGLUE (tables, file readers, formats,
metrics), C4 cleaning, and inspection for `t5pod data`."""
