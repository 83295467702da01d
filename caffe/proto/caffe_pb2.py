"""pycaffe's ``caffe.proto.caffe_pb2``: caffec's generated schema under pycaffe's name.

This module replaces itself with :mod:`caffec.formats.caffe_pb2`, so both import paths
give the same module, the same descriptor pool and the same message classes (a
``NetParameter`` made through one is an instance of the other's, and ``CopyFrom``
works across them). Registering the schema a second time would clash in protobuf's pool.
"""

import sys

from caffec.formats import caffe_pb2

sys.modules[__name__] = caffe_pb2
