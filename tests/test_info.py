"""nas-info: one genotype's size and shape from a name, a record or a string; bad input is one line, exit 2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from nas.cli import info
from nas.core.records import make_record, write_record
from search_spaces.darts.genotype import load_genotype
from search_spaces.darts.networks import eval_param_count

SMALL = ["--C", "8", "--layers", "5"]  # CIFAR scale is the default; a small network keeps the test quick


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def run(argv: list[str], capsys) -> str:
    info.main(argv)
    return capsys.readouterr().out


def test_name_record_and_string_give_the_same_json(tmp_path, capsys) -> None:
    genotype = load_genotype("PDARTS")
    record = write_record(tmp_path / "mine.json", make_record(genotype))
    outputs = [json.loads(run([spec, "--json", *SMALL], capsys)) for spec in ("PDARTS", str(record), repr(genotype))]
    assert outputs[0] == outputs[1] == outputs[2]
    result = outputs[0]
    assert result["params"] == eval_param_count(genotype, 8, 5)
    assert result["flops"] > 0
    assert result["ops"]["normal"] == {"sep_conv_3x3": 4, "skip_connect": 2, "dil_conv_3x3": 1, "dil_conv_5x5": 1}
    assert (result["skips"], result["depth"], result["network"], result["input_size"]) == (2, 3, "cifar", 32)


def test_defaults_are_the_eval_scale(capsys) -> None:
    result = json.loads(run(["DARTS_V2", "--json"], capsys))
    assert (result["C"], result["layers"], result["params"]) == (36, 20, 3_349_342)
    assert result["flops"] == pytest.approx(549.8, rel=1e-3)  # thop, DESIGN section 9
    assert (result["skips"], result["depth"]) == (2, 2)


def test_imagenet_uses_the_imagenet_network(capsys) -> None:
    result = json.loads(run(["NASNet", "--dataset", "imagenet", "--C", "8", "--layers", "3", "--json"], capsys))
    assert (result["network"], result["input_size"]) == ("imagenet", 224)
    assert result["params"] == eval_param_count(load_genotype("NASNet"), 8, 3, 1000, 3, "imagenet")
    assert result["flops"] > 0 and result["depth"] == 1


def test_text_and_markdown(capsys) -> None:
    text = run(["AmoebaNet", *SMALL], capsys)
    assert "params" in text and "FLOPs" in text and "depth     3" in text and "sep_conv_3x3 x2" in text
    table = run(["DARTS_V1", "NASNet", "--markdown", *SMALL], capsys).strip().splitlines()
    assert len(table) == 4 and table[2].startswith("| DARTS_V1 |") and table[3].startswith("| NASNet |")


@pytest.mark.parametrize("argv, message", [
    (["NO_SUCH"], "unknown genotype 'NO_SUCH'"),
    (["pdarts"], "did you mean PDARTS"),
    (["Genotype(normal=[('sep_conv_3x3', 0)"], "not valid syntax"),
    (["__import__('os').system('x')"], "attribute access is not allowed"),
    (["PDARTS", "--dataset", "mnist"], "invalid choice"),
    (["PDARTS", "--C", "0"], "must be positive"),
    (["PDARTS", "--dataset", "imagenet", "--C", "7"], "even C"),
    (["PDARTS", "--json", "--markdown"], "not allowed with"),
])
def test_bad_input_is_one_line_exit_2(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        info.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err


def test_runs_as_a_module_and_is_an_entry_point(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "nas.cli.info", "Genotype(normal=oops)"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert '"nas-info=nas.cli.info:main"' in (ROOT / "setup.py").read_text()
