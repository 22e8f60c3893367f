import glob
import os
import re

import pytest

from conftest import ROOT
from reference.config import Config, ConfigError, FrozenConfigError, help_text


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_every_config_in_configs_loads(path):
    cfg = Config.from_sources(path)
    assert cfg.name == os.path.splitext(os.path.basename(path))[0]


def test_readme_documents_exactly_the_configs_there_are():
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme.split("\n## Configs\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z0-9_]+\.yaml)`", "\n".join(
        line for line in section.splitlines() if line.startswith("|"))))
    present = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml"))}
    assert documented == present, f"README only: {documented - present}; undocumented: {present - documented}"


def test_reference_config_values():
    cfg = Config.from_sources(os.path.join(ROOT, "configs", "mlperf_closed.yaml"))
    assert (cfg.batch_size, cfg.learning_rate, cfg.eval_every, cfg.eval_batch_size) == (2048, 1.0, 102400, 16384)
    assert cfg.auc_threshold == 0.8025 and cfg.max_ind_range == 40_000_000
    assert len(cfg.table_sizes) == 26 and cfg.table_sizes[0] == 39884406
    assert cfg.bottom_mlp == [13, 512, 256, 128] and cfg.top_mlp == [1024, 1024, 512, 256, 1]


def test_overrides_parse_types_and_mlp_notation():
    cfg = Config.from_sources(None, ["batch_size=64", "learning_rate=0.5", "bottom_mlp=13-32-128",
                                     "auc_threshold=null", "shuffle_batches=false"])
    assert cfg.batch_size == 64 and cfg.learning_rate == 0.5 and cfg.bottom_mlp == [13, 32, 128]
    assert cfg.auc_threshold is None and cfg.shuffle_batches is False
    assert cfg.where("batch_size") == "command line"


@pytest.mark.parametrize("override, message", [
    ("batch_sise=3", "unknown key 'batch_sise' (did you mean batch_size?)"),
    ("batch_size=abc", "batch_size: expected an integer, got 'abc'"),
    ("batch_size=0", "batch_size: must be > 0, got 0"),
    ("learning_rate=-1", "learning_rate: must be a finite number > 0"),
    ("optimizer=adam", "optimizer: must be one of sgd, rowwise_adagrad, adagrad, got 'adam'"),
    ("interaction=mul", "interaction: must be one of dot, cat, sum, dcn"),
    ("top_mlp=1024-2", "top_mlp: must end in 1"),
    ("bottom_mlp=13-64", "bottom_mlp: must end in embedding_dim=128"),
    ("shuffle_batches=maybe", "shuffle_batches: expected true or false"),
    ("warmup_steps=10", None),
    ("eval_every_epochs=2", "eval_every_epochs: must be in [0, 1]"),
    ("table_sizes=[3,0]", "table_sizes: must be a non-empty list of positive row counts"),
    ("optimizer=rowwise_adagrad", "the closed division requires sgd for submission_benchmark=dlrm"),
    ("submission_benchmark=dlrm3", "must be one of dlrm, dlrm_dcnv2"),
])
def test_bad_values_rejected_naming_the_key(override, message):
    if message is None:
        Config.from_sources(None, [override])
        return
    with pytest.raises(ConfigError) as e:
        Config.from_sources(None, [override])
    assert message in str(e.value)
    assert str(e.value).startswith("command line: ")


def test_closed_division_optimizer_is_the_benchmarks():
    dcnv2 = ["submission_benchmark=dlrm_dcnv2", "interaction=dcn", "adagrad_eps=1e-8"]
    with pytest.raises(ConfigError, match="optimizer: the closed division of submission_benchmark=dlrm_dcnv2 "
                                          "requires 'adagrad'.*, got 'sgd'"):
        Config.from_sources(None, dcnv2)
    Config.from_sources(None, [*dcnv2, "optimizer=adagrad"])


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("batch_size: 2048\nepochs: two\n")
    with pytest.raises(ConfigError, match=rf"{path}: epochs: expected an integer, got 'two'"):
        Config.from_sources(str(path))
    path.write_text("nonsense_key: 1\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown key 'nonsense_key'"):
        Config.from_sources(str(path))
    path.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        Config.from_sources(str(path))
    with pytest.raises(ConfigError, match="config file not found"):
        Config.from_sources(str(tmp_path / "missing.yaml"))


def test_decay_must_not_start_inside_warmup():
    with pytest.raises(ConfigError, match="decay_start_step: must not come before the end of warmup"):
        Config.from_sources(None, ["warmup_steps=100", "decay_start_step=50", "decay_steps=10"])


def test_help_lists_every_key():
    text = help_text()
    for f in Config.keys():
        assert f"  {f.name} " in text


def test_a_validated_config_is_frozen_and_replace_validates_again():
    cfg = Config.from_sources(None, ["batch_size=512"])
    with pytest.raises(FrozenConfigError, match="batch_size cannot change"):
        cfg.batch_size = 1024
    with pytest.raises(FrozenConfigError):
        cfg.update({"seed": 3}, origin="late")
    other = cfg.replace("package", seed=3)
    assert (other.seed, other.batch_size, other.where("seed"), other.where("batch_size")) == \
        (3, 512, "package", "command line")
    assert (cfg.seed, cfg.where("seed")) == (0, "default")  # the original is untouched
    with pytest.raises(FrozenConfigError):
        other.seed = 4
    with pytest.raises(ConfigError, match="^package: batch_size: must be > 0"):
        cfg.replace("package", batch_size=0)


def test_exponents_without_a_dot_are_numbers():
    # YAML 1.1 reads 1e-8 as a string; 1.0e-8 as a float: both mean the number.
    cfg = Config.from_sources(None, ["adagrad_eps=1e-8", "learning_rate=4e-3"])
    assert (cfg.adagrad_eps, cfg.learning_rate) == (1e-8, 0.004)
    with pytest.raises(ConfigError, match="learning_rate: expected a number, got 'fast'"):
        Config.from_sources(None, ["learning_rate=fast"])
