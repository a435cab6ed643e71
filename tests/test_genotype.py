"""Genotype string/dict/record forms, the eval-free parser, validation and the shipped registry."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nas.core.errors import UserError
from nas.core.records import make_record, read_record, write_record
from search_spaces.darts.genotype import (
    Genotype,
    genotype_from_dict,
    load_genotype,
    parse_genotype,
    shipped_genotype_names,
    to_dict,
    validate_genotype,
)

# As published in the papers' reference repositories (DARTS cnn/genotypes.py, P-DARTS, PC-DARTS PC_DARTS_cifar).
PUBLISHED = {
    "DARTS_V1": "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
                "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], "
                "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
                "('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
                "('avg_pool_3x3', 0)], reduce_concat=range(2, 6))",
    "DARTS_V2": "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
                "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
                "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
                "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
                "('max_pool_3x3', 1)], reduce_concat=range(2, 6))",
    "PDARTS": "Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
              "('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 0), ('dil_conv_5x5', 4)], "
              "normal_concat=range(2, 6), reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), "
              "('dil_conv_5x5', 2), ('max_pool_3x3', 0), ('dil_conv_3x3', 1), ('dil_conv_3x3', 1), "
              "('dil_conv_5x5', 3)], reduce_concat=range(2, 6))",
    "PC_DARTS": "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), "
                "('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], "
                "normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), "
                "('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), "
                "('sep_conv_3x3', 2)], reduce_concat=range(2, 6))",
    "PC_DARTS_image": "Genotype(normal=[('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), "
                      "('skip_connect', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), "
                      "('dil_conv_5x5', 4)], normal_concat=range(2, 6), reduce=[('sep_conv_3x3', 0), "
                      "('skip_connect', 1), ('dil_conv_5x5', 2), ('max_pool_3x3', 1), ('sep_conv_3x3', 2), "
                      "('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 3)], reduce_concat=range(2, 6))",
    # DARTS cnn/genotypes.py: 5 nodes, concat lists that skip states
    "NASNet": "Genotype(normal=[('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 0), ('sep_conv_3x3', 0), "
              "('avg_pool_3x3', 1), ('skip_connect', 0), ('avg_pool_3x3', 0), ('avg_pool_3x3', 0), "
              "('sep_conv_3x3', 1), ('skip_connect', 1)], normal_concat=range(2, 7), reduce=[('sep_conv_5x5', 1), "
              "('sep_conv_7x7', 0), ('max_pool_3x3', 1), ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), "
              "('sep_conv_5x5', 0), ('skip_connect', 3), ('avg_pool_3x3', 2), ('sep_conv_3x3', 2), "
              "('max_pool_3x3', 1)], reduce_concat=range(4, 7))",
    "AmoebaNet": "Genotype(normal=[('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 0), "
                 "('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('avg_pool_3x3', 3), ('sep_conv_3x3', 1), "
                 "('skip_connect', 1), ('skip_connect', 0), ('avg_pool_3x3', 1)], normal_concat=range(4, 7), "
                 "reduce=[('avg_pool_3x3', 0), ('sep_conv_3x3', 1), ('max_pool_3x3', 0), ('sep_conv_7x7', 2), "
                 "('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1), "
                 "('conv_7x1_1x7', 0), ('sep_conv_3x3', 5)], reduce_concat=[3, 4, 6])",
}
PUBLISHED["PC_DARTS_cifar"] = PUBLISHED["PC_DARTS"]
PUBLISHED_ERROR_PCT = {"DARTS_V1": 3.00, "DARTS_V2": 2.76, "PDARTS": 2.50, "PC_DARTS": 2.57, "PC_DARTS_cifar": 2.57,
                       "NASNet": 2.65, "AmoebaNet": 3.34}
V2 = PUBLISHED["DARTS_V2"]


def user_error(text: str) -> str:
    """The one-line UserError message parse_genotype gives for `text`."""
    with pytest.raises(UserError) as info:
        parse_genotype(text)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shipped_names():
    assert shipped_genotype_names() == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_genotype_is_the_published_one_and_round_trips(name: str, tmp_path: Path):
    genotype = load_genotype(name)
    assert str(genotype) == repr(genotype) == PUBLISHED[name]
    assert parse_genotype(str(genotype)) == genotype
    assert genotype_from_dict(json.loads(json.dumps(to_dict(genotype)))) == genotype
    path = write_record(tmp_path / f"{name}.json", make_record(genotype, source="test"))
    assert genotype_from_dict(read_record(path)["genotype"]) == genotype
    assert load_genotype(str(path)) == genotype


@pytest.mark.parametrize("name", sorted(PUBLISHED_ERROR_PCT))  # PC_DARTS_image reports ImageNet errors
def test_shipped_record_fields(name: str):
    record = read_record(Path(__file__).resolve().parents[1] / "genotypes" / f"{name}.json")
    assert record["space"] == "darts"
    assert "arXiv" in record["source"] and "github.com" in record["source"]
    assert record["metrics"]["cifar10_test_error_pct"] == PUBLISHED_ERROR_PCT[name]
    assert 3.0 < record["metrics"]["params_M"] < 4.0


def test_parsed_form_is_tuples_and_int_lists():
    genotype = parse_genotype(V2)
    assert genotype.normal[0] == ("sep_conv_3x3", 0) and isinstance(genotype.normal[0], tuple)
    assert genotype.normal_concat == [2, 3, 4, 5] and genotype.reduce_concat == [2, 3, 4, 5]
    assert genotype.to_dict()["normal"][0] == ["sep_conv_3x3", 0]


def test_non_contiguous_concat_prints_a_list_and_multiline_input_parses():
    genotype = parse_genotype(V2)._replace(normal_concat=[2, 4, 5])
    assert "normal_concat=[2, 4, 5]" in str(genotype)
    assert parse_genotype(str(genotype)) == genotype
    assert parse_genotype("\n  " + V2.replace(", reduce=", ",\n    reduce=") + "\n") == parse_genotype(V2)


def test_old_spellings_are_normalised():
    text = V2.replace("'sep_conv_3x3', 0", "'conv 3x3', 0").replace("'dil_conv_3x3'", "' dil conv 3x3'")
    genotype = parse_genotype(text)
    assert genotype.normal[0] == ("conv_3x3", 0)
    assert genotype.normal[7] == ("dil_conv_3x3", 2)
    assert "conv 3x3" not in str(genotype)


@pytest.mark.parametrize("text, expected", [
    ("__import__('os').system('x')", "attribute access is not allowed"),
    (V2.replace("normal_concat=range(2, 6)", "normal_concat=__import__('os')"), "call __import__(...) is not allowed"),
    (V2.replace("range(2, 6), reduce=", "os.sep, reduce="), "attribute access is not allowed in a genotype string: os"),
    ("open('/etc/passwd')", "call open(...) is not allowed"),
    (V2.replace("range(2, 6)", "list(range(2, 6))", 1), "call list(...) is not allowed"),
    (V2.replace("('sep_conv_3x3', 0)", "sep_conv_3x3", 1), "name 'sep_conv_3x3' is not allowed"),
    (V2.replace("('sep_conv_3x3', 0)", "('sep_conv_3x3', 0, 1)", 1), "normal pair 0 must be (op name, input index)"),
    (V2.replace("('sep_conv_3x3', 0)", "(0, 'sep_conv_3x3')", 1), "normal pair 0 must be (op name, input index)"),
    (V2.replace("('sep_conv_3x3', 0)", "('sep_conv_3x3', 1.5)", 1), "unsupported expression"),
    (V2.replace("('max_pool_3x3', 0)", "'max_pool_3x3'", 1), "reduce pair 0 must be (op name, input index)"),
    (V2.replace(", reduce_concat=range(2, 6)", ""), "missing reduce_concat"),
    (V2.replace("reduce_concat=", "output_concat="), "unknown output_concat"),
    (V2.replace("reduce_concat=range(2, 6)", "reduce_concat=range(2, 6), normal=[]"), "repeats field normal"),
    ("Genotype([], [2], [], [2])", "keyword arguments only"),
    ("Genotype(**fields)", "keyword arguments only"),
    (V2.replace("range(2, 6)", "range(2, x)", 1), "name 'x' is not allowed"),
    (V2.replace("range(2, 6)", "range(2, 10**9)", 1), "unsupported expression in a genotype string: 10 ** 9"),
    (V2[:-1], "not valid syntax"),
    ("genotype = " + V2, "not valid syntax"),
    ("[1, 2]", "must be one Genotype(...) call"),
    ("Genotypes" + V2[len("Genotype"):], "call Genotypes(...) is not allowed"),
    (V2.replace("'sep_conv_3x3'", "'sep_conv_9x9'", 1), "unknown op 'sep_conv_9x9'; known ops: none, max_pool_3x3"),
])
def test_parser_refusals(text: str, expected: str):
    assert expected in user_error(text)


def test_validate_index_out_of_range():
    good = parse_genotype(V2)
    bad = good._replace(reduce=good.reduce[:5] + [("skip_connect", 4)] + good.reduce[6:])
    with pytest.raises(UserError, match=r"reduce cell node 2 \(pair 5\): input index 4 is out of range; "
                                        r"node 2 takes inputs 0\.\.3"):
        validate_genotype(bad)
    too_far = V2.replace("('sep_conv_3x3', 1)", "('sep_conv_3x3', 2)", 1)
    assert "normal cell node 0 (pair 1): input index 2 is out of range" in user_error(too_far)
    assert "input index -1 is out of range" in user_error(V2.replace("('sep_conv_3x3', 1)", "('sep_conv_3x3', -1)", 1))


def test_validate_pair_count_and_concat():
    good = parse_genotype(V2)
    with pytest.raises(UserError, match=r"normal cell has 7 \(op, input\) pairs, expected 8"):
        validate_genotype(good._replace(normal=good.normal[:7]))
    with pytest.raises(UserError, match="expected 6"):
        validate_genotype(good, steps=3)
    for concat in ([], [2, 2, 3], [1, 2], [2, 6]):
        with pytest.raises(UserError, match="reduce_concat .* is invalid: it must list distinct intermediate nodes 2"):
            validate_genotype(good._replace(reduce_concat=concat))
    validate_genotype(good._replace(normal_concat=range(2, 6)))


def test_validate_ops_of_the_space():
    genotype = parse_genotype(V2)
    darts = {"max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"}
    validate_genotype(genotype, ops=darts)
    with pytest.raises(UserError) as info:
        validate_genotype(genotype, ops={"normal": {"sep_conv_3x3", "skip_connect"}})
    assert str(info.value) == "op 'dil_conv_3x3' is not in this space's normal ops: sep_conv_3x3, skip_connect"
    with pytest.raises(UserError) as info:
        validate_genotype(genotype, ops={"normal": darts, "reduce": ("skip_connect", "avg_pool_3x3")})
    assert str(info.value) == "op 'max_pool_3x3' is not in this space's reduce ops: avg_pool_3x3, skip_connect"


def test_validate_accepts_numpy_ints():
    np = pytest.importorskip("numpy")
    genotype = parse_genotype(V2)
    as_numpy = genotype._replace(normal=[(op, np.int64(i)) for op, i in genotype.normal])
    validate_genotype(as_numpy)
    assert str(as_numpy) == str(genotype)
    assert json.dumps(as_numpy.to_dict()) == json.dumps(genotype.to_dict())


@pytest.mark.parametrize("data, expected", [
    ([1, 2], "must be a JSON object with keys normal, normal_concat, reduce, reduce_concat, got list"),
    ({"normal": []}, "missing normal_concat, reduce, reduce_concat"),
    ({**to_dict(parse_genotype(V2)), "extra": 1}, "unknown extra"),
    ({**to_dict(parse_genotype(V2)), "normal": "sep_conv_3x3"}, "normal must be a list of (op, input index) pairs"),
    ({**to_dict(parse_genotype(V2)), "reduce": [["skip_connect"]] * 8}, "reduce pair 0 must be (op name, input index)"),
    ({**to_dict(parse_genotype(V2)), "reduce_concat": "2345"}, "reduce_concat must be a list of ints"),
    ({**to_dict(parse_genotype(V2)), "normal_concat": [2, 3.0]}, "normal_concat must be a list of ints"),
])
def test_genotype_from_dict_refusals(data: object, expected: str):
    with pytest.raises(UserError) as info:
        genotype_from_dict(data)
    assert expected in str(info.value)


def test_make_record_shape():
    genotype = parse_genotype(V2)
    record = make_record(genotype, source="run 7", search={"seed": 3}, metrics={"params_M": 3.3})
    assert record == {"genotype": genotype.to_dict(), "space": "darts", "source": "run 7", "search": {"seed": 3},
                      "metrics": {"params_M": 3.3}}
    assert make_record(genotype, space="nb201")["search"] == {}


def test_write_record_is_atomic_and_leaves_no_temp_files(tmp_path: Path):
    path = tmp_path / "runs" / "found.json"
    record = make_record(parse_genotype(V2), source="first")
    assert write_record(path, record) == path
    write_record(path, {**record, "source": "second"})
    assert [p.name for p in path.parent.iterdir()] == ["found.json"]
    assert read_record(path)["source"] == "second"
    assert '["sep_conv_3x3", 0]' in path.read_text()  # one pair per line
    with pytest.raises(TypeError):
        write_record(path, {**record, "search": {"bad": object()}})
    assert [p.name for p in path.parent.iterdir()] == ["found.json"]
    assert read_record(path)["source"] == "second"


def test_read_record_errors_name_the_file(tmp_path: Path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"genotype": ')
    with pytest.raises(UserError, match=r"broken\.json: not valid JSON .*line 1"):
        read_record(broken)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(to_dict(parse_genotype(V2))))
    with pytest.raises(UserError, match=r'plain\.json: not a genotype record: expected a JSON object with a "genotype'):
        read_record(plain)
    with pytest.raises(UserError, match=r"missing\.json: cannot read genotype record"):
        read_record(tmp_path / "missing.json")
    wrong = tmp_path / "wrong.json"
    write_record(wrong, {"genotype": {**to_dict(parse_genotype(V2)), "normal": [["sep_conv_3x3", 9]] * 8}})
    with pytest.raises(UserError, match=r"wrong\.json: normal cell node 0 \(pair 0\): input index 9 is out of range"):
        load_genotype(str(wrong))


def test_load_genotype_by_name_path_and_string(tmp_path: Path):
    by_name = load_genotype("DARTS_V2")
    assert isinstance(by_name, Genotype)
    assert load_genotype(f"  {V2}  ") == by_name
    path = write_record(tmp_path / "v2.json", make_record(by_name))
    assert load_genotype(str(path)) == by_name


def test_load_genotype_unknown_names():
    with pytest.raises(UserError) as info:
        load_genotype("DARTS_V3")
    assert str(info.value) == ("unknown genotype 'DARTS_V3'; give a shipped name (AmoebaNet, DARTS_V1, DARTS_V2, "
                               "NASNet, PC_DARTS, PC_DARTS_cifar, PC_DARTS_image, PDARTS), a record .json path or a "
                               "'Genotype(...)' string")
    with pytest.raises(UserError, match="names are case-sensitive: did you mean PDARTS"):
        load_genotype("pdarts")
    with pytest.raises(UserError, match="attribute access is not allowed"):
        load_genotype("__import__('os').system('true')")
