"""pycaffe's ``caffe.proto``: the home of ``caffe_pb2``."""
