"""Caffe's files, in one place that every stage may use: the schema, binary protos, weights,
snapshots, databases of Datums, images, list files, IDX, old format versions, and caffec's
own artifact manifest. Nothing here parses prototxt text (that is :mod:`caffec.frontend`,
with lark), so the runtime reads these files without the compiler installed."""
