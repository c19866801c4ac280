"""The `jaxarch` command: list, run (final JSON line), and override errors that name the valid keys."""

import json
import subprocess
import sys

import pytest

from jaxarch import experiments
from jaxarch.cli import main


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_list_prints_every_experiment(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ["mnist1d-logreg", "mnist1d-mlp", "mnist1d-cnn", "mnist1d-cnn-shuffled", "digits-cnn"]:
        assert name in out
    assert len(out.strip().splitlines()) == len(experiments.names())


def test_run_ends_with_a_json_line_of_final_metrics(tmp_path, capsys):
    code = main(["run", "mnist1d-logreg", "train.steps=20", "train.eval_every=0", "train.log_every=10",
                 "--workdir", str(tmp_path / "run"), "--no-progress"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["experiment"] == "mnist1d-logreg"
    assert {"test_accuracy", "params", "train_seconds"} <= set(result)
    assert result["params"] == 40 * 10 + 10


def test_run_again_resumes_and_restart_starts_over(tmp_path, capsys):
    args = ["run", "mnist1d-logreg", "train.steps=20", "train.eval_every=0", "--workdir", str(tmp_path),
            "--no-progress"]
    main(args)
    main(args)
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["resumed_from"] == 20
    assert "resuming mnist1d-logreg from the checkpoint at step 20" in captured.err
    main([*args, "--restart"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["resumed_from"] is None


def test_unknown_override_key_is_an_error_listing_valid_keys(tmp_path, capsys):
    code = main(["run", "mnist1d-cnn", "train.stepz=3", "--workdir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.stepz'" in err and "did you mean train.steps" in err and "optim.learning_rate" in err
    assert not (tmp_path / "metrics.jsonl").exists()


def test_unknown_experiment_is_an_error(capsys):
    assert main(["run", "no-such-experiment"]) == 2
    assert "unknown experiment" in capsys.readouterr().err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "jaxarch.cli", "list"], capture_output=True, text=True, check=True)
    assert "mnist1d-cnn" in out.stdout


def test_tour_table_has_published_numbers():
    from jaxarch.tour import ROWS, format_table

    results = [(row, {"params": 10, "test_accuracy": 0.5, "train_seconds": 2.0 if row.experiment == "mnist1d-cnn"
                      else 5.0}) for row in ROWS]
    table = format_table(results)
    assert "94%" in table and "68%" in table and "32%" in table and "91%" in table and "human" in table
    assert "50.0%" in table
    gru = next(line for line in table.splitlines() if "mnist1d-gru" in line)
    assert gru.split()[-1] == "2.5"  # train seconds over the CNN's, 5.0 / 2.0
    assert {"mnist1d-rnn", "mnist1d-lstm", "mnist1d-gru", "mnist1d-transformer"} <= {row.experiment for row in ROWS}
    from jaxarch import experiments

    for row in ROWS:
        assert experiments.get_config(row.experiment).data.name == "mnist1d", row


def test_tour_model_selection():
    from jaxarch.tour import select_rows

    assert [row.experiment for row in select_rows("mnist1d-gru,mnist1d-cnn")] == ["mnist1d-cnn", "mnist1d-gru"]
    with pytest.raises(ValueError, match=r"--models is 'mnist1d-cnn,cnn', expected a comma-separated subset"):
        select_rows("mnist1d-cnn,cnn")


def test_gradients_command_shows_the_lstm_keeping_more_gradient(tmp_path, capsys):
    assert main(["gradients", "--seq-len", "60", "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cells = summary["cells"]
    # At initialisation a tanh RNN's gradient shrinks geometrically going back in time; the LSTM's forget
    # gate (bias 1) lets far more of it reach the first step.
    assert cells["rnn"]["first_over_last"] < 1e-3
    assert cells["lstm"]["first_over_last"] > 100 * cells["rnn"]["first_over_last"]
    assert (tmp_path / "gradient_norms_T60.png").stat().st_size > 0


def test_run_help_documents_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "143, 130  stopped by SIGTERM, SIGINT" in out and "--allow-config-change" in out
    assert "a work directory another run holds" in out


def test_ctrl_c_before_a_run_handles_it_is_exit_130_without_a_traceback(monkeypatch, capsys):
    from jaxarch import experiments

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "get_config", interrupted)
    assert main(["run", "mnist1d-logreg"]) == 130
    assert capsys.readouterr().err == "jaxarch: stopped by SIGINT\n"
