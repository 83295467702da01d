"""Reading and writing Caffe's files: prototxt text, binary protos, upgrades, NetState."""
