"""Tests of the prototxt reader and writer: syntax, values, errors with their spans, round trips."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caffec.errors import UserError
from caffec.formats import caffe_pb2
from caffec.formats.text_writer import format_text
from caffec.frontend.textformat import parse_text, read_text_file

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CORPUS = SHARED / "corpus" / "bvlc"


def _all_types_class() -> type[Message]:
    """A proto2 message with every scalar type, an enum, maps, a oneof and recursion."""
    fdp = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="all_types.proto", package="caffec_test")
    color = file.enum_type.add(name="Color")
    for name, number in [("RED", 0), ("GREEN", 1), ("BLUE", -2)]:
        color.value.add(name=name, number=number)
    message = file.message_type.add(name="AllTypes")

    def add(name: str, number: int, kind: int, repeated: bool = False, type_name: str = ""):
        label = fdp.LABEL_REPEATED if repeated else fdp.LABEL_OPTIONAL
        field = message.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
        return field

    for number, (name, kind) in enumerate(
        [
            ("i32", fdp.TYPE_INT32),
            ("i64", fdp.TYPE_INT64),
            ("u32", fdp.TYPE_UINT32),
            ("u64", fdp.TYPE_UINT64),
            ("s32", fdp.TYPE_SINT32),
            ("fx64", fdp.TYPE_FIXED64),
            ("sf32", fdp.TYPE_SFIXED32),
            ("f", fdp.TYPE_FLOAT),
            ("d", fdp.TYPE_DOUBLE),
            ("b", fdp.TYPE_BOOL),
            ("s", fdp.TYPE_STRING),
            ("by", fdp.TYPE_BYTES),
        ],
        start=1,
    ):
        add(name, number, kind)
    add("color", 13, fdp.TYPE_ENUM, type_name=".caffec_test.Color")
    add("child", 14, fdp.TYPE_MESSAGE, type_name=".caffec_test.AllTypes")
    add("ri", 20, fdp.TYPE_INT32, repeated=True)
    add("rf", 21, fdp.TYPE_FLOAT, repeated=True)
    add("rs", 22, fdp.TYPE_STRING, repeated=True)
    add("rcolor", 23, fdp.TYPE_ENUM, repeated=True, type_name=".caffec_test.Color")
    add("children", 24, fdp.TYPE_MESSAGE, repeated=True, type_name=".caffec_test.AllTypes")
    add("rby", 25, fdp.TYPE_BYTES, repeated=True)
    add("rb", 26, fdp.TYPE_BOOL, repeated=True)
    for name, number, key, value, value_type in [
        ("counts", 30, fdp.TYPE_STRING, fdp.TYPE_INT32, ""),
        ("tree", 31, fdp.TYPE_INT32, fdp.TYPE_MESSAGE, ".caffec_test.AllTypes"),
    ]:
        entry = message.nested_type.add(name=name.capitalize() + "Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=key, label=fdp.LABEL_OPTIONAL)
        entry.field.add(name="value", number=2, type=value, label=fdp.LABEL_OPTIONAL)
        if value_type:
            entry.field[1].type_name = value_type
        add(name, number, fdp.TYPE_MESSAGE, repeated=True, type_name=entry.name)
    message.oneof_decl.add(name="choice")
    add("label", 40, fdp.TYPE_STRING).oneof_index = 0
    add("number", 41, fdp.TYPE_INT32).oneof_index = 0
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffec_test.AllTypes"))


AllTypes = _all_types_class()


def parse(text: str, message_class: type[Message] = AllTypes) -> Message:
    return parse_text(text, message_class)[0]


def error(text: str, message_class: type[Message] = AllTypes) -> UserError:
    with pytest.raises(UserError) as caught:
        parse_text(text, message_class, filename="net.prototxt")
    return caught.value


def where(err: UserError) -> str:
    assert err.span is not None
    return f"{err.span.line}:{err.span.col}"


def f32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


# --- syntax ---------------------------------------------------------------------------------


def test_nested_messages_with_and_without_colon_and_angle_brackets() -> None:
    m = parse("child { i32: 1 child: { i32: 2 child < i32: 3 > } }")
    assert (m.child.i32, m.child.child.i32, m.child.child.child.i32) == (1, 2, 3)
    assert parse("child: < >").HasField("child")
    assert parse("child {}").HasField("child")


def test_repeated_fields_by_repetition_and_lists() -> None:
    m = parse("ri: 1 ri: [2, 3] ri: [] ri: 4 children: [{i32: 1}, <i32: 2>] children { i32: 3 }")
    assert list(m.ri) == [1, 2, 3, 4]
    assert [c.i32 for c in m.children] == [1, 2, 3]
    assert list(parse("rs: ['a', \"b\" 'c']").rs) == ["a", "bc"]


def test_separators_comments_and_whitespace() -> None:
    text = (
        "# header { not: parsed }\ni32: 1, i64: 2; u32: 3 # trailing 'comment\"\n\tchild {i32:4;}"
    )
    m = parse(text)
    assert (m.i32, m.i64, m.u32, m.child.i32) == (1, 2, 3, 4)
    assert parse("") == AllTypes()
    assert parse("# only a comment") == AllTypes()


def test_crlf_and_bom_keep_positions() -> None:
    text = '\ufeffi32: 1\r\n# c\r\nchild {\r\n  s: "x"\r\n}\r\n'
    m, spans = parse_text(text, AllTypes, "a.prototxt")
    assert (m.i32, m.child.s) == (1, "x")
    assert str(spans.get(("i32",))) == "a.prototxt:1:1"
    assert str(spans.get(("child", "s"))) == "a.prototxt:4:3"


def test_string_escapes() -> None:
    m = parse(r"""s: "\n\t\r\a\b\f\v\\\'\"\?" rs: 'it\'s' rs: "\101\60\0" rs: "\x41\x4" """)
    assert m.s == "\n\t\r\a\b\f\v\\'\"?"
    assert list(m.rs) == ["it's", "A0\0", "A\x04"]
    m = parse(r"""s: "\u00e9\U0001F600\ud83d\ude00" rs: "h\u00e9llo ✓" """)
    assert m.s == "é😀😀"
    assert m.rs[0] == "héllo ✓"


def test_adjacent_strings_concatenate() -> None:
    assert parse("""s: "a" 'b' "c\\n" """).s == "abc\n"


def test_bytes_fields_keep_raw_bytes() -> None:
    m = parse(r"""by: "\xff\000A\377" rby: "é" """)
    assert m.by == b"\xff\x00A\xff"
    assert m.rby[0] == "é".encode()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("42", 42),
        ("0x1F", 31),
        ("0X1f", 31),
        ("017", 15),
        ("-5", -5),
        ("- 5", -5),
        ("-0x10", -16),
        ("2147483647", 2**31 - 1),
        ("-2147483648", -(2**31)),
    ],
)
def test_integer_forms(text: str, value: int) -> None:
    assert parse(f"i32: {text}").i32 == value


def test_integer_limits_of_each_type() -> None:
    m = parse(f"i64: {-(2**63)} u32: {2**32 - 1} u64: {2**64 - 1} s32: -7 fx64: 0xFFFFFFFFFFFFFFFF")
    assert (m.i64, m.u32, m.u64, m.s32, m.fx64) == (-(2**63), 2**32 - 1, 2**64 - 1, -7, 2**64 - 1)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-4", 1e-4),
        ("1E+3", 1000.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("1.0f", 1.0),
        ("2F", 2.0),
        ("3", 3.0),
        ("0x10", 16.0),
        ("-2.5", -2.5),
        ("- .25", -0.25),
        ("inf", math.inf),
        ("-inf", -math.inf),
        ("infinity", math.inf),
        ("-Infinity", -math.inf),
    ],
)
def test_float_forms(text: str, value: float) -> None:
    m = parse(f"f: {text} d: {text}")
    assert m.f == f32(value)
    assert m.d == value


def test_nan_and_negative_zero() -> None:
    m = parse("f: nan d: NaN rf: -0 rf: -0.0")
    assert math.isnan(m.f) and math.isnan(m.d)
    assert [math.copysign(1, x) for x in m.rf] == [-1, -1]


def test_bools_and_enums() -> None:
    m = parse("rb: [true, false, True, False, t, f, 1, 0] b: true")
    assert list(m.rb) == [True, False, True, False, True, False, True, False]
    m = parse("color: GREEN rcolor: [RED, 1, -2, BLUE]")
    assert m.color == 1
    assert list(m.rcolor) == [0, 1, -2, -2]


def test_maps_and_oneofs() -> None:
    m = parse('counts { key: "a" value: 1 } counts: [{key: "b" value: 2}] tree { key: 3 value {} }')
    assert dict(m.counts) == {"a": 1, "b": 2}
    assert 3 in m.tree
    assert parse('label: "x"').WhichOneof("choice") == "label"


def test_descriptor_pb2_file() -> None:
    text = """
    name: "a.proto" package: "p"
    message_type {
      name: "M"
      field { name: "x" number: 1 label: LABEL_REPEATED type: TYPE_INT32 }
      options { deprecated: true }
    }
    """
    m = parse(text, descriptor_pb2.FileDescriptorProto)
    assert m.message_type[0].field[0].label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    assert m.message_type[0].options.deprecated


# --- spans ----------------------------------------------------------------------------------


def test_spans_of_nested_and_repeated_fields() -> None:
    text = (
        'i32: 1\nchildren {\n  s: "a"\n}\nchildren {\n  child { ri: 5 ri: [6,\n  7] }\n}\nrs: "x"\n'
    )
    _, spans = parse_text(text, AllTypes, "n.prototxt")
    expected = {
        (): "1:1",
        ("i32",): "1:1",
        ("children",): "2:1",
        ("children", 0): "2:1",
        ("children", 0, "s"): "3:3",
        ("children", 1): "5:1",
        ("children", 1, "child"): "6:3",
        ("children", 1, "child", "ri"): "6:11",
        ("children", 1, "child", "ri", 0): "6:11",
        ("children", 1, "child", "ri", 1): "6:22",
        ("children", 1, "child", "ri", 2): "7:3",
        ("rs",): "9:1",
        ("rs", 0): "9:1",
    }
    assert {path: f"{s.line}:{s.col}" for path in spans if (s := spans.get(path))} == expected
    assert all(spans.get(path).file == "n.prototxt" for path in spans)


def test_spans_in_a_caffe_net() -> None:
    text = """name: "tiny"
layer {
  name: "data"
  type: "Input"
}
layer {
  name: "conv"
  convolution_param { num_output: 2 kernel_size: 3 kernel_size: 5 }
}
"""
    net, spans = parse_text(text, caffe_pb2.NetParameter, "tiny.prototxt")
    assert list(net.layer[1].convolution_param.kernel_size) == [3, 5]
    assert str(spans.get(("layer", 1))) == "tiny.prototxt:6:1"
    assert str(spans.get(("layer", 1, "name"))) == "tiny.prototxt:7:3"
    path = ("layer", 1, "convolution_param", "kernel_size")
    assert str(spans.get((*path, 0))) == "tiny.prototxt:8:37"
    assert str(spans.get((*path, 1))) == "tiny.prototxt:8:52"
    # paths that were not written fall back to their nearest written ancestor
    assert str(spans.get(("layer", 0, "include", 0))) == "tiny.prototxt:2:1"


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "at", "words"),
    [
        ("i32: 1\nchild {\n  i32: 2\n", "3:9", "expected '}' to close 'child' opened at 2:1"),
        (
            "children: [{i32: 1}, {i32: 2",
            "1:29",
            "expected '}' to close the message opened at 1:22",
        ),
        ("ri: [1, 2", "1:10", "expected ']' to close 'ri' opened at 1:1"),
        ("child { i32: 1 >", "1:16", "expected a field name or '}' to close 'child' opened at 1:1"),
        ("i32: 1 }", "1:8", "unexpected '}': there is no open '{' to close"),
        ("i32 5", "1:5", "expected ':', '{' or '<' after 'i32', found number 5"),
        ("i32: }", "1:6", "expected a value, found '}'"),
        ("child { i32: 1 } }", "1:18", "unexpected '}': there is no open '{' to close"),
        ("ri: [1,]", "1:8", "expected a value, found ']'"),
        ("ri: [1 2]", "1:8", "expected ',' or ']' to close 'ri' opened at 1:1, found number 2"),
        ('s: "a" 5', "1:8", "expected a field name or end of file, found number 5"),
        ("i32: -", "1:7", "expected a number or inf/nan after '-', found end of file"),
        ("i32: 1\n  @", "2:3", "unexpected character '@'"),
        ('s: "abc\n"', "1:4", "unterminated string"),
        ("s: 'abc", "1:4", "unterminated string"),
        ("i32: 5abc", "1:6", "invalid number '5abc'"),
        ("f: 1.2.3", "1:4", "invalid number '1.2.3'"),
        ("f: 1e", "1:4", "invalid number '1e'"),
    ],
)
def test_syntax_errors(text: str, at: str, words: str) -> None:
    err = error(text)
    assert words in err.message
    assert where(err) == at
    assert err.span.file == "net.prototxt"
    assert err.hint


def test_unknown_field_suggests_a_close_name() -> None:
    err = error("child {\n  i33: 1\n}")
    assert err.message == "AllTypes has no field named 'i33'"
    assert err.hint == "did you mean 'i32'?"
    assert where(err) == "2:3"
    err = error("layer { convolution_param { kernal_size: 3 } }", caffe_pb2.NetParameter)
    assert "ConvolutionParameter has no field named 'kernal_size'" in err.message
    assert err.hint == "did you mean 'kernel_size'?"
    assert where(err) == "1:29"


def test_unknown_field_without_a_close_name_lists_fields() -> None:
    err = error("zzzzzz: 1")
    assert err.hint is not None and err.hint.startswith("AllTypes has these fields: i32, i64")


@pytest.mark.parametrize(
    ("text", "at", "words"),
    [
        ('i32: "3"', "1:6", "field 'i32' (int32) expects an integer, found string \"3\""),
        ("i32: 3.5", "1:6", "field 'i32' (int32) expects an integer, found number 3.5"),
        ("i32: -inf", "1:6", "field 'i32' (int32) expects an integer, found '-inf'"),
        ("child: 5", "1:8", "field 'child' (message AllTypes) expects a message, found number 5"),
        ("children: [1]", "1:12", "field 'children' (message AllTypes) expects a message"),
        ("s { }", "1:3", "field 's' is a string, not a message"),
        ("ri: [{ }]", "1:6", "field 'ri' is a int32, not a message"),
        ("s: 5", "1:4", "field 's' (string) expects a string in quotes, found number 5"),
        ("f: abc", "1:4", "field 'f' (float) expects a number, found 'abc'"),
        ("d: 'x'", "1:4", "field 'd' (double) expects a number, found string 'x'"),
        ("b: yes", "1:4", "field 'b' (bool) expects true or false, found 'yes'"),
        ("b: 2", "1:4", "field 'b' (bool) expects true or false, found number 2"),
        ("b: -1", "1:4", "field 'b' (bool) expects true or false, found number -1"),
        ('color: "RED"', "1:8", "field 'color' (enum Color) expects one of its value names"),
        ("color: 1.0", "1:8", "field 'color' (enum Color) expects one of its value names"),
    ],
)
def test_wrong_types(text: str, at: str, words: str) -> None:
    err = error(text)
    assert words in err.message
    assert where(err) == at


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("i32: 2147483648", "2147483648 is out of range for field 'i32' (int32"),
        ("i32: -2147483649", "-2147483649 is out of range"),
        ("u32: -1", "-1 is out of range for field 'u32' (uint32: 0 to 4294967295)"),
        ("u32: 0x100000000", "4294967296 is out of range"),
        (f"i64: {2**63}", f"{2**63} is out of range for field 'i64' (int64"),
        (f"u64: {2**64}", f"{2**64} is out of range for field 'u64' (uint64"),
    ],
)
def test_integers_out_of_range(text: str, words: str) -> None:
    err = error("\n  " + text)
    assert words in err.message
    assert where(err) == f"2:{text.index(':') + 5}"


def test_bad_enum_values() -> None:
    err = error("color: GREN")
    assert err.message == "'GREN' is not a value of enum Color (field 'color')"
    assert err.hint == "did you mean 'GREEN'?"
    assert where(err) == "1:8"
    err = error("rcolor: [RED, PURPLE]")
    assert err.hint == "valid values: RED, GREEN, BLUE"
    assert where(err) == "1:15"
    err = error("color: 7")
    assert err.message == "7 is not a value of enum Color (field 'color')"
    err = error("solver_mode: CPUU", caffe_pb2.SolverParameter)
    assert err.hint == "did you mean 'CPU'?"


def test_field_given_twice_names_both_places() -> None:
    err = error('s: "a"\nchild { i32: 1 }\ns: "b"')
    assert err.message == "field 's' is given twice (first at 1:1)"
    assert where(err) == "3:1"
    err = error("child { }\n  child { }")
    assert "field 'child' is given twice (first at 1:1)" in err.message
    assert where(err) == "2:3"


def test_two_members_of_a_oneof() -> None:
    err = error('label: "x" number: 3')
    assert "'label' (at 1:1) and 'number' belong to the same oneof 'choice'" in err.message
    assert where(err) == "1:12"


def test_missing_required_fields() -> None:
    text = 'name: "n"\nlayer {\n  clip_param { max: 1 }\n}'
    err = error(text, caffe_pb2.NetParameter)
    assert err.message == "ClipParameter is missing required field 'min'"
    assert where(err) == "3:3"
    err = error("name: [{ }]", descriptor_pb2.UninterpretedOption)
    assert err.message == "NamePart is missing required fields 'name_part' and 'is_extension'"
    assert where(err) == "1:8"
    assert parse("layer { clip_param { min: 0 max: 1 } }", caffe_pb2.NetParameter)


def test_list_for_a_non_repeated_field() -> None:
    err = error("i32: [1, 2]")
    assert err.message == "field 'i32' is not repeated, so it cannot take a list"
    assert where(err) == "1:6"


@pytest.mark.parametrize(
    ("text", "at", "words"),
    [
        (r's: "ok\xff"', "1:4", "the string for field 's' is not valid UTF-8"),
        (r's: "a\qb"', "1:6", "invalid escape '\\q'"),
        (r's: "abc\400"', "1:8", "octal escape '\\400' is above \\377"),
        (r's: "\ud800x"', "1:5", "invalid Unicode escape for code point U+D800"),
        (r's: "\udc00"', "1:5", "invalid Unicode escape for code point U+DC00"),
        (r's: "\U00110000"', "1:5", "invalid Unicode escape for code point U+110000"),
        ("i32: 09", "1:6", "invalid octal number '09'"),
    ],
)
def test_bad_string_and_number_contents(text: str, at: str, words: str) -> None:
    err = error(text)
    assert words in err.message
    assert where(err) == at


def test_nesting_depth_is_limited() -> None:
    assert parse("child { " * 100 + "}" * 100).HasField("child")
    err = error("child { " * 101 + "}" * 101)
    assert "nested more than 100 deep" in err.message
    assert where(err) == "1:807"


def test_error_text_shows_the_source_line(tmp_path: Path) -> None:
    path = tmp_path / "net.prototxt"
    path.write_text("i32: 1\ncolor: GREN\n", encoding="utf-8")
    with pytest.raises(UserError) as caught:
        read_text_file(path, AllTypes)
    assert str(caught.value).splitlines()[:3] == [
        f"{path}:2:8: error: 'GREN' is not a value of enum Color (field 'color')",
        "    color: GREN",
        "           ^",
    ]


# --- files ----------------------------------------------------------------------------------


def test_read_text_file(tmp_path: Path) -> None:
    path = tmp_path / "net.prototxt"
    path.write_bytes(b'\xef\xbb\xbfi32: 1\r\nchild {\r\n  s: "\xc3\xa9"\r\n}\r\n')
    message, spans = read_text_file(path, AllTypes)
    assert message.child.s == "é"
    assert spans.get(("child", "s")) is not None
    assert str(spans.get(("child", "s"))) == f"{path}:3:3"


def test_read_text_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file: '.*missing.prototxt'"):
        read_text_file(tmp_path / "missing.prototxt", AllTypes)
    with pytest.raises(UserError, match="is a directory"):
        read_text_file(tmp_path, AllTypes)
    path = tmp_path / "weights.caffemodel"
    path.write_bytes(b"i32: 1\ns: '\xc3\xa9\xff'\n")
    with pytest.raises(UserError, match=r"is not UTF-8 text \(byte 0xff\)") as caught:
        read_text_file(path, AllTypes)
    assert str(caught.value.span) == f"{path}:2:6"


# --- writing --------------------------------------------------------------------------------


def test_format_in_caffe_style() -> None:
    net = caffe_pb2.NetParameter(name="LeNet")
    layer = net.layer.add(name="conv1", type="Convolution", bottom=["data"], top=["conv1"])
    layer.param.add(lr_mult=1)
    layer.param.add(lr_mult=2)
    layer.convolution_param.num_output = 20
    layer.convolution_param.kernel_size.append(5)
    layer.convolution_param.weight_filler.type = "xavier"
    layer.include.add(phase=caffe_pb2.TEST)
    layer.convolution_param.bias_term = False
    assert format_text(net) == (
        'name: "LeNet"\n'
        "layer {\n"
        '  name: "conv1"\n'
        '  type: "Convolution"\n'
        '  bottom: "data"\n'
        '  top: "conv1"\n'
        "  param {\n"
        "    lr_mult: 1\n"
        "  }\n"
        "  param {\n"
        "    lr_mult: 2\n"
        "  }\n"
        "  include {\n"
        "    phase: TEST\n"
        "  }\n"
        "  convolution_param {\n"
        "    num_output: 20\n"
        "    bias_term: false\n"
        "    kernel_size: 5\n"
        "    weight_filler {\n"
        '      type: "xavier"\n'
        "    }\n"
        "  }\n"
        "}\n"
    )
    assert format_text(AllTypes()) == ""


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),
        (1e-4, "0.0001"),
        (1e-5, "1e-05"),
        (0.00390625, "0.00390625"),
        (100.0, "100"),
        (-2.5, "-2.5"),
        (3.4028234663852886e38, "3.4028235e+38"),
        (1.401298464324817e-45, "1e-45"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (math.nan, "nan"),
    ],
)
def test_float_fields_print_shortest(value: float, text: str) -> None:
    m = AllTypes(f=value)
    assert format_text(m) == f"f: {text}\n"
    again = parse(format_text(m))
    assert again.f == m.f or (math.isnan(again.f) and math.isnan(m.f))


def test_double_fields_print_repr() -> None:
    assert format_text(AllTypes(d=0.1)) == "d: 0.1\n"
    assert format_text(AllTypes(d=1 / 3)) == "d: 0.3333333333333333\n"
    assert format_text(AllTypes(d=-math.inf)) == "d: -inf\n"


def test_strings_are_escaped_to_reparse() -> None:
    m = AllTypes(s='a"b\\c\nd\te\x01é\u2028😀', by=b"\x00\xff\"'\\ok\n")
    text = format_text(m)
    assert text == 's: "a\\"b\\\\c\\nd\\te\\001é\\u2028😀"\nby: "\\000\\377\\"\'\\\\ok\\n"\n'
    assert parse(text) == m


def test_enums_bools_maps_written_by_name() -> None:
    m = AllTypes(color=2 - 4, b=True, rb=[False], counts={"z": 1, "a": 2})
    m.tree[5].i32 = 1
    assert format_text(m) == (
        "b: true\ncolor: BLUE\nrb: false\n"
        'counts {\n  key: "a"\n  value: 2\n}\ncounts {\n  key: "z"\n  value: 1\n}\n'
        "tree {\n  key: 5\n  value {\n    i32: 1\n  }\n}\n"
    )


# --- round trips ----------------------------------------------------------------------------

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from("\"'\\\n\r\t\x00\x7f #{}:\u2028é"), st.characters(codec="utf-8")
    ),
    max_size=8,
)


def _scalars(field: FieldDescriptor) -> st.SearchStrategy:
    """Values of one non-message field; float fields get only float32-exact values."""
    kind = field.cpp_type
    if kind in _INT_RANGES:
        return st.integers(*_INT_RANGES[kind])
    if kind == FieldDescriptor.CPPTYPE_FLOAT:
        return st.floats(width=32, allow_nan=False)
    if kind == FieldDescriptor.CPPTYPE_DOUBLE:
        return st.floats(allow_nan=False)
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        return st.sampled_from([value.number for value in field.enum_type.values])
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=8)
    return _TEXT


def _fill_random(draw: st.DrawFn, message: Message, depth: int) -> Message:
    """Set a few random fields of ``message``, nesting at most ``depth`` messages deeper."""
    fields = [
        field
        for field in message.DESCRIPTOR.fields
        if depth > 0 or field.cpp_type != FieldDescriptor.CPPTYPE_MESSAGE
    ]
    if not fields:
        return message
    chosen = draw(st.lists(st.sampled_from(fields), max_size=5, unique_by=lambda f: f.name))
    chosen += [field for field in fields if field.is_required and field not in chosen]
    oneofs_used = set()
    for field in chosen:
        if field.containing_oneof is not None:
            if field.containing_oneof.name in oneofs_used:
                continue
            oneofs_used.add(field.containing_oneof.name)
        container = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            for _ in range(draw(st.integers(0, 2))):
                key = draw(_scalars(key_field))
                if value_field.message_type is not None:
                    _fill_random(draw, container[key], depth - 1)
                else:
                    container[key] = draw(_scalars(value_field))
        elif field.is_repeated and field.message_type is not None:
            for _ in range(draw(st.integers(0, 2))):
                _fill_random(draw, container.add(), depth - 1)
        elif field.is_repeated:
            container.extend(draw(st.lists(_scalars(field), max_size=3)))
        elif field.message_type is not None:
            container.SetInParent()
            _fill_random(draw, container, depth - 1)
        else:
            setattr(message, field.name, draw(_scalars(field)))
    return message


@st.composite
def messages(draw: st.DrawFn, message_class: type[Message]) -> Message:
    return _fill_random(draw, message_class(), depth=3)


@pytest.mark.parametrize(
    ("message_class", "examples"),
    [
        (AllTypes, 100),  # every field type, maps and a oneof: the widest coverage per example
        (descriptor_pb2.FileDescriptorProto, 50),
        (struct_pb2.Struct, 50),
        (caffe_pb2.NetParameter, 50),
        (caffe_pb2.SolverParameter, 50),
    ],
    ids=lambda param: param.DESCRIPTOR.name if isinstance(param, type) else str(param),
)
def test_format_then_parse_gives_the_same_message(
    message_class: type[Message], examples: int
) -> None:
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(messages(message_class))
    def round_trip(message: Message) -> None:
        text = format_text(message)
        again, _ = parse_text(text, message_class)
        assert again == message, text
        # bytes compare -0.0 and 0.0 apart, which == does not
        assert again.SerializeToString(deterministic=True) == message.SerializeToString(
            deterministic=True
        )

    round_trip()


_PIECES = [
    *["i32", "child", "children", "ri", "s", "by", "f", "b", "color", "counts", "key", "value"],
    *[":", "{", "}", "<", ">", "[", "]", ",", ";", "-", " ", "\n", "\r\n", "#c\n", "@", "\ufeff"],
    *['"a\\n"', "'b'", '"\\xff"', '"\\q', '"', "1", "0x1F", "09", "1.5", ".5", "1e", "inf"],
    *["GREEN", "true", "2", "5abc", "\\u00e9", "é"],
]


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(st.lists(st.sampled_from(_PIECES), max_size=20).map("".join), st.text(max_size=20))
)
def test_any_text_parses_or_raises_a_user_error_with_a_span(text: str) -> None:
    try:
        parse_text(text, AllTypes)
    except UserError as err:
        assert err.span is not None and err.span.line >= 1 and err.span.col >= 1
        assert err.message and err.hint


# --- the corpus of real Caffe files ---------------------------------------------------------


def _corpus_files() -> list[Path]:
    return sorted(CORPUS.rglob("*.prototxt")) if CORPUS.is_dir() else []


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS}")
@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_file_parses_and_round_trips(path: Path) -> None:
    message_class = caffe_pb2.SolverParameter if "solver" in path.name else caffe_pb2.NetParameter
    message, spans = read_text_file(path, message_class)
    assert message.ListFields()
    assert len(spans) > 1
    again, _ = parse_text(format_text(message), message_class)
    assert again == message


def test_corpus_is_not_empty() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"no shared folder at {SHARED}")
    assert len(_corpus_files()) >= 50
