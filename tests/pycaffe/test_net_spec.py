"""pycaffe's NetSpec: Caffe's own generator scripts, as users write them, give nets caffec
compiles; small nets come out with pycaffe's names and order; misspelt keywords fail clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import graph_from_text
from google.protobuf import text_format

import caffe
from caffe.net_spec import NetSpec, UnknownNameError, assign_proto, param_name_dict, to_proto
from caffe.net_spec import layers as L
from caffe.net_spec import params as P
from caffec.errors import UserError
from caffec.formats import caffe_pb2


def expected(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def write_lmdb(path: Path, shape: tuple[int, int, int], count: int) -> Path:
    """A tiny database of ``count`` random ``shape`` images with labels 0, 1, ..."""
    lmdb = pytest.importorskip("lmdb", reason="lmdb (the `data` extra) is not installed")
    rng = np.random.default_rng(0)
    with lmdb.open(str(path), map_size=1 << 26) as env, env.begin(write=True) as txn:
        for i in range(count):
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            datum = caffe_pb2.Datum(channels=shape[0], height=shape[1], width=shape[2],
                                    data=pixels.tobytes(), label=i % 10)  # fmt: skip
            txn.put(b"%08d" % i, datum.SerializeToString())
    return path


# --- examples/pycaffe/caffenet.py, as its user writes it ---------------------------------


def conv_relu(bottom, ks, nout, stride=1, pad=0, group=1):
    conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout, pad=pad,
                         group=group, weight_filler=dict(type="gaussian", std=0.01),
                         bias_filler=dict(type="constant", value=0))  # fmt: skip
    return conv, L.ReLU(conv, in_place=True)


def fc_relu(bottom, nout):
    fc = L.InnerProduct(bottom, num_output=nout, weight_filler=dict(type="gaussian", std=0.005))
    return fc, L.ReLU(fc, in_place=True)


def max_pool(bottom, ks, stride=1):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def caffenet(lmdb, batch_size=256, include_acc=False):
    data, label = L.Data(source=lmdb, backend=P.Data.LMDB, batch_size=batch_size, ntop=2,
                         transform_param=dict(crop_size=227, mean_value=[104, 117, 123],
                                              mirror=True))  # fmt: skip
    conv1, relu1 = conv_relu(data, 11, 96, stride=4)
    pool1 = max_pool(relu1, 3, stride=2)
    norm1 = L.LRN(pool1, local_size=5, alpha=1e-4, beta=0.75)
    conv2, relu2 = conv_relu(norm1, 5, 256, pad=2, group=2)
    pool2 = max_pool(relu2, 3, stride=2)
    norm2 = L.LRN(pool2, local_size=5, alpha=1e-4, beta=0.75)
    conv3, relu3 = conv_relu(norm2, 3, 384, pad=1)
    conv4, relu4 = conv_relu(relu3, 3, 384, pad=1, group=2)
    conv5, relu5 = conv_relu(relu4, 3, 256, pad=1, group=2)
    pool5 = max_pool(relu5, 3, stride=2)
    fc6, relu6 = fc_relu(pool5, 4096)
    drop6 = L.Dropout(relu6, in_place=True)
    fc7, relu7 = fc_relu(drop6, 4096)
    drop7 = L.Dropout(relu7, in_place=True)
    fc8 = L.InnerProduct(drop7, num_output=1000)
    loss = L.SoftmaxWithLoss(fc8, label)
    if include_acc:
        acc = L.Accuracy(fc8, label)
        return to_proto(loss, acc)
    return to_proto(loss)


def test_caffenet_script_gives_pycaffes_names_and_a_net_caffec_compiles(tmp_path: Path) -> None:
    db = write_lmdb(tmp_path / "val_lmdb", (3, 240, 240), 2)
    net = caffenet(str(db), batch_size=2, include_acc=True)
    names = [(layer.name, list(layer.bottom), list(layer.top)) for layer in net.layer]
    assert names[:5] == [
        ("Data1", [], ["Data1", "Data2"]),
        ("Convolution1", ["Data1"], ["Convolution1"]),
        ("ReLU1", ["Convolution1"], ["Convolution1"]),
        ("Pooling1", ["Convolution1"], ["Pooling1"]),
        ("LRN1", ["Pooling1"], ["LRN1"]),
    ]
    assert names[-4:] == [
        ("Dropout2", ["InnerProduct2"], ["InnerProduct2"]),
        ("InnerProduct3", ["InnerProduct2"], ["InnerProduct3"]),
        ("SoftmaxWithLoss1", ["InnerProduct3", "Data2"], ["SoftmaxWithLoss1"]),
        ("Accuracy1", ["InnerProduct3", "Data2"], ["Accuracy1"]),
    ]
    assert len(net.layer) == 25
    conv2 = net.layer[5].convolution_param
    assert (conv2.num_output, list(conv2.pad), conv2.group) == (256, [2], 2)
    assert conv2.weight_filler.type == "gaussian" and conv2.weight_filler.std == pytest.approx(0.01)
    assert list(net.layer[0].transform_param.mean_value) == [104, 117, 123]
    assert net.layer[0].data_param.backend == caffe_pb2.DataParameter.LMDB

    graph = graph_from_text(str(net), "TEST")
    shapes = {v.blob: v.shape for v in graph.values.values()}
    assert shapes["Data1"] == (2, 3, 227, 227)
    assert shapes["Pooling3"] == (2, 256, 6, 6)
    assert shapes["InnerProduct3"] == (2, 1000)
    assert shapes["Accuracy1"] == ()
    train = graph_from_text(str(caffenet(str(db), batch_size=2)), "TRAIN")
    assert "Accuracy1" not in {v.blob for v in train.values.values()}


# --- examples/01-learning-lenet.ipynb's lenet(), as its user writes it -------------------


def lenet(lmdb, batch_size):
    n = NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1.0 / 255), ntop=2)  # fmt: skip
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(
        n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier")
    )
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    return n.to_proto()


def test_lenet_notebook_net_runs_in_caffec(tmp_path: Path, monkeypatch) -> None:
    write_lmdb(tmp_path / "mnist_test_lmdb", (1, 28, 28), 8)
    proto = tmp_path / "lenet_auto_test.prototxt"
    with open(proto, "w") as f:
        f.write(str(lenet("mnist_test_lmdb", 4)))
    net = lenet("mnist_test_lmdb", 4)
    assert [layer.name for layer in net.layer] == [
        "data", "conv1", "pool1", "conv2", "pool2", "fc1", "relu1", "score", "loss"
    ]  # fmt: skip
    assert list(net.layer[6].bottom) == list(net.layer[6].top) == ["fc1"]
    assert list(net.layer[7].bottom) == ["fc1"]

    monkeypatch.chdir(tmp_path)
    run = caffe.Net(str(proto), caffe.TEST)
    run.forward()
    assert run.blobs["data"].data.shape == (4, 1, 28, 28)
    assert run.blobs["score"].data.shape == (4, 10)
    assert np.isfinite(run.blobs["loss"].data).all()
    assert list(run.blobs["label"].data) == [0, 1, 2, 3]
    run.close()  # its reader's database handle, shared per process


# --- pycaffe's naming and order rules on small nets --------------------------------------


def test_anonymous_net_is_named_by_type_and_count() -> None:
    data = L.Input(shape=dict(dim=[2, 3, 8, 8]))
    conv = L.Convolution(data, num_output=4, kernel_size=3, weight_filler=dict(type="xavier"),
                         param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)])  # fmt: skip
    relu = L.ReLU(conv, in_place=True)
    pool = L.Pooling(relu, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    assert L.InnerProduct(pool, num_output=10).to_proto() == expected("""
        layer { name: "Input1" type: "Input" top: "Input1"
                input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
        layer { name: "Convolution1" type: "Convolution" bottom: "Input1" top: "Convolution1"
                param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
                convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
        layer { name: "ReLU1" type: "ReLU" bottom: "Convolution1" top: "Convolution1" }
        layer { name: "Pooling1" type: "Pooling" bottom: "Convolution1" top: "Pooling1"
                pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
        layer { name: "InnerProduct1" type: "InnerProduct" bottom: "Pooling1" top: "InnerProduct1"
                inner_product_param { num_output: 10 } }
    """)


def test_layers_come_depth_first_from_the_tops_in_order() -> None:
    data = L.Input(shape=dict(dim=[1, 2]))
    a = L.ReLU(data)
    b = L.Sigmoid(data)
    total = L.Eltwise(a, b, operation=P.Eltwise.SUM)
    assert [layer.name for layer in to_proto(total).layer] == ["Input1", "ReLU1", "Sigmoid1",
                                                               "Eltwise1"]  # fmt: skip
    # each call names afresh, so the first top given is reached first
    assert [layer.name for layer in to_proto(b, a).layer] == ["Input1", "Sigmoid1", "ReLU1"]
    assert to_proto(total).layer[3].eltwise_param.operation == caffe_pb2.EltwiseParameter.SUM


def test_netspec_names_tops_and_layers_by_attribute() -> None:
    n = NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[2, 3, 4, 4]), dict(dim=[2])], ntop=2)
    n["feat"] = L.Convolution(L.ReLU(n.data), num_output=2, kernel_size=1)  # unnamed ReLU inside
    n.act = L.ReLU(n.feat, in_place=True)
    n.loss = L.SoftmaxWithLoss(L.InnerProduct(n.act, num_output=3), n.label, loss_weight=0.5,
                               propagate_down=[True, False], ignore_label=1)  # fmt: skip
    n.silence = L.Silence(n.label, ntop=0)
    assert n.keys() == ["data", "label", "feat", "act", "loss", "silence"]
    assert n.to_proto() == expected("""
        layer { name: "data" type: "DummyData" top: "data" top: "label"
                dummy_data_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } shape { dim: 2 } } }
        layer { name: "ReLU1" type: "ReLU" bottom: "data" top: "ReLU1" }
        layer { name: "feat" type: "Convolution" bottom: "ReLU1" top: "feat"
                convolution_param { num_output: 2 kernel_size: 1 } }
        layer { name: "act" type: "ReLU" bottom: "feat" top: "feat" }
        layer { name: "InnerProduct1" type: "InnerProduct" bottom: "feat" top: "InnerProduct1"
                inner_product_param { num_output: 3 } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "InnerProduct1" bottom: "label"
                top: "loss" loss_weight: 0.5 propagate_down: true propagate_down: false
                loss_param { ignore_label: 1 } }
        layer { name: "silence" type: "Silence" bottom: "label" }
    """)
    assert to_proto(L.Silence(n.data, ntop=0)).layer[-1].name == "Silence1"


def test_keywords_go_where_pycaffe_puts_them() -> None:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]), include=dict(phase=caffe.TEST))
    # a lone value in a repeated field is a list of one; a *param keyword is a layer field
    n.up = L.Deconvolution(n.data, num_output=3, kernel_size=[4, 2], stride=2,
                           param=dict(lr_mult=0), exclude=[dict(stage="deploy")])  # fmt: skip
    n.norm = L.LRN(n.up, lrn_param=dict(local_size=3, norm_region=P.LRN.WITHIN_CHANNEL))
    n.py = L.Python(n.norm, module="mine", layer="MyLayer", param_str="{}")
    net = n.to_proto()
    assert net.layer[0].include[0].phase == caffe_pb2.TEST
    up = net.layer[1]
    assert up.convolution_param.num_output == 3 and list(up.convolution_param.kernel_size) == [4, 2]
    assert list(up.convolution_param.stride) == [2]
    assert up.param[0].lr_mult == 0 and up.exclude[0].stage == ["deploy"]
    assert net.layer[2].lrn_param.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL
    assert net.layer[3].python_param.layer == "MyLayer"  # the param message is tried first
    assert net.layer[3].name == "py"
    assert param_name_dict()["InnerProduct"] == "inner_product"
    assert param_name_dict()["HDF5Data"] == "hdf5_data"


def test_in_place_update_and_item_access() -> None:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 4]))
    n.ip = L.InnerProduct(n.data, num_output=2)
    n.update("ip", dict(num_output=5, bias_term=False))
    assert n["ip"] is n.ip and n.vals() == [n.data, n.ip]
    layer = n.to_proto().layer[1]
    assert (layer.inner_product_param.num_output, layer.inner_product_param.bias_term) == (5, False)
    msg = caffe_pb2.LayerParameter()
    assign_proto(msg, "param", [caffe_pb2.ParamSpec(lr_mult=3), dict(decay_mult=0)])
    assert [(p.lr_mult, p.decay_mult) for p in msg.param] == [(3, 1), (1, 0)]


def test_generated_text_is_what_caffec_reads() -> None:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 9, 9]))
    n.conv = L.Convolution(n.data, num_output=3, kernel_size=3, pad=1,
                           weight_filler=dict(type="gaussian", std=1e-4))  # fmt: skip
    n.pool = L.Pooling(n.conv, pool=P.Pooling.AVE, kernel_size=3, stride=2)
    n.out = L.Scale(n.pool, bias_term=True, filler=dict(value=0.5))
    graph = graph_from_text(str(n.to_proto()))
    assert {v.blob: v.shape for v in graph.values.values()}["out"] == (2, 3, 4, 4)


def test_a_deep_chain_needs_no_recursion() -> None:
    top = L.Input(shape=dict(dim=[1]))
    for _ in range(3000):
        top = L.ReLU(top)
    net = top.to_proto()
    assert len(net.layer) == 3001 and net.layer[-1].name == "ReLU3000"


# --- mistakes fail where they are written, saying what was meant -------------------------


@pytest.mark.parametrize(
    "make, message, hint",
    [
        (lambda x: L.Convolution(x, num_ouput=3), "Convolution has no parameter 'num_ouput'",
         "did you mean 'num_output'?"),
        (lambda x: L.Convolution(x, weight_filler=dict(tpye="xavier")),
         "convolution_param.weight_filler.tpye is not a field of FillerParameter",
         "did you mean 'type'?"),
        (lambda x: L.Pooling(x, pooling_parma=dict(pool=0)), "Pooling has no parameter",
         "did you mean 'pooling_param'?"),
        (lambda x: L.Convoluton(x, num_output=3), "Convoluton has no parameter 'num_output'",
         "did you mean 'Convolution'?"),
        (lambda x: L.InnerProduct(x, num_output="ten"), "inner_product_param.num_output cannot be 'ten'", None),
        (lambda x: L.InnerProduct(x, num_output=[1, 2]), "num_output takes one value", None),
        (lambda x: L.InnerProduct(x, weight_filler="xavier"), "weight_filler is a FillerParameter", None),
        (lambda x: L.Concat((x, x)), "bottom 0 is a tuple", None),
        (lambda x: L.ReLU(in_place=True), "in_place=True", None),
        (lambda x: P.Pooling.MAXIMUM, "PoolingParameter has no value 'MAXIMUM'", "did you mean 'MAX'?"),
        (lambda x: P.Poolng.MAX, "caffe_pb2 has no PoolngParameter", "did you mean 'Pooling'?"),
    ],
)  # fmt: skip
def test_mistakes_are_user_errors(make, message: str, hint: str | None) -> None:
    x = L.Input(shape=dict(dim=[1, 2]))
    with pytest.raises(UserError) as err:
        make(x)
    assert message in err.value.message
    assert hint is None or hint in err.value.hint


def test_unknown_names_are_also_attribute_errors_as_in_pycaffe() -> None:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1]))
    assert not hasattr(n, "dtaa") and not hasattr(P.Pooling, "MAXX") and hasattr(P.Pooling, "MAX")
    with pytest.raises(AttributeError):
        L.Convolution(n.data, kernel=3)
    with pytest.raises(UnknownNameError) as err:
        _ = n.dtaa
    assert err.value.hint == "did you mean 'data'?"
    with pytest.raises(UserError, match="unpack it"):
        n.both = L.Slice(n.data, ntop=2)
    with pytest.raises(UserError, match="not a top"):
        n.text = "data"
