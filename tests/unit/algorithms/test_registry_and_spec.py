from __future__ import annotations

import numpy as np
import pytest
import torch

from omnifm.algorithms import ALGORITHMS, Algorithm, build_model, check_run_spec, get_algorithm, make_run_spec, weighted_average

SMALL = {"channels": [8, 16, 32], "strides": [2, 2]}


def test_the_issue_algorithms_are_registered():
    issue = {"omnifm", "fedavg", "fedprox", "fedper", "ditto", "fedbn", "feddg", "scaffold", "local", "central",
             "fedrep", "feddyn", "fedper-fusion", "moon"}
    ablations = {"omnifm-noretrieval", "omnifm-noeca", "omnifm-noprompt", "omnifm-noalign"}
    assert issue | ablations <= set(ALGORITHMS)
    assert all(a.description for a in ALGORITHMS.values())


def test_unknown_algorithm_lists_the_choices():
    choices = (r"\['central', 'ditto', 'fedavg', 'fedbn', 'feddg', 'feddyn', 'fedper', 'fedper-fusion', 'fedprox', "
               r"'fedrep', 'local', 'moon', 'omnifm'")
    with pytest.raises(ValueError, match=r"unknown algorithm 'fedx'; choose one of " + choices):
        get_algorithm("fedx")


def test_fedavg_is_the_plain_network_with_every_parameter_shared():
    model = build_model(make_run_spec("fedavg", model=SMALL))
    assert model.spectral_encoder is None and model.eca is None and model.prompt is None
    assert get_algorithm("fedavg").shared_parameter_names(model) == [n for n, _ in model.named_parameters()]


def test_omnifm_keeps_head_and_suffix_local():
    model = build_model(make_run_spec("omnifm", model=SMALL))
    shared = set(get_algorithm("omnifm").shared_parameter_names(model))
    assert shared.isdisjoint(model.personal_parameter_names())
    assert "prompt.suffix" not in shared and any(n.startswith("spectral_encoder") for n in shared)


def test_same_spec_same_initial_weights_without_touching_global_rng():
    spec = make_run_spec("omnifm", model=SMALL, seed=5)
    state = torch.random.get_rng_state()
    a, b = build_model(spec), build_model(spec)
    assert torch.equal(state, torch.random.get_rng_state())
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"top_k": 0}, "top_k must be an int >= 1, got 0"),
        ({"align_weight": -0.5}, "align_weight must be >= 0, got -0.5"),
        ({"num_prototypes": 0}, "num_prototypes must be an int >= 1, got 0"),
        ({"prox_mu": -1.0}, "prox_mu"),
        ({"top_k": True}, "top_k must be an int >= 1, got True"),
        ({"num_prototypes": 2.0}, "num_prototypes must be an int >= 1, got 2.0"),
        ({"algorithm": "x"}, "unknown algorithm 'x'"),
        ({"model": {"out_channels": 2}}, "model.out_channels is 2 but the task has 4 classes"),
        ({"task": {"classes": ["tumour"]}}, "start with 'background'"),
        ({"feddyn_alpha": 0.0}, r"feddyn_alpha must be > 0.0, got 0.0"),
        ({"feddyn_alpha": "0.1"}, r"feddyn_alpha must be > 0.0, got '0.1'"),
        ({"fedrep_head_epochs": 0}, "fedrep_head_epochs must be an int >= 1, got 0"),
        ({"fedrep_head_epochs": 1.5}, "fedrep_head_epochs must be an int >= 1, got 1.5"),
    ],
)
def test_bad_spec(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_run_spec(**kwargs)


def test_spec_stores_numpy_ints_as_python_ints():
    spec = make_run_spec(top_k=np.int64(3), num_prototypes=np.int32(5))
    assert (spec["top_k"], spec["num_prototypes"]) == (3, 5)
    assert type(spec["top_k"]) is int and type(spec["num_prototypes"]) is int


def test_spec_from_the_wire_is_revalidated():
    spec = make_run_spec("omnifm")
    assert check_run_spec(dict(spec)) == spec
    with pytest.raises(ValueError, match="lacks"):
        check_run_spec({"algorithm": "omnifm"})
    with pytest.raises(ValueError, match="must be a dict"):
        check_run_spec(None)


def test_weighted_average_matches_hand_computation():
    out = weighted_average([({"w": np.array([1.0, 2.0], np.float32)}, 1), ({"w": np.array([3.0, 6.0], np.float32)}, 3)])
    np.testing.assert_allclose(out["w"], [2.5, 5.0])
    with pytest.raises(ValueError, match="no contributions"):
        weighted_average([])
    with pytest.raises(ValueError, match="total sample weight"):
        weighted_average([({"w": np.zeros(1, np.float32)}, 0)])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"rule": "fedx"}, r"rule must be one of \('fedrep', 'feddyn', 'scaffold', 'ditto', 'feddg', 'moon'\) or '', got 'fedx'"),
     ({"rule": "feddyn", "proximal": True}, "rule 'feddyn' cannot be combined with proximal"),
     ({"rule": "scaffold", "proximal": True}, "rule 'scaffold' cannot be combined")],
)
def test_bad_strategy_rule(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Algorithm("x", **kwargs)


def test_strategy_files_are_named_by_the_registry():
    assert (get_algorithm("fedrep").rule, get_algorithm("feddyn").rule, get_algorithm("fedper").rule) == ("fedrep", "feddyn", "")
    assert get_algorithm("fedrep").personal == get_algorithm("fedper").personal, "FedRep's head is FedPer's decoder"
    assert not get_algorithm("feddyn").personal and not get_algorithm("fedper-fusion").uses_bank


def test_job_persistor_args_fill_placeholders_and_name_what_is_missing(tmp_path):
    import json

    from omnifm.algorithms.spec import job_persistor_args

    config = tmp_path / "app" / "config"
    config.mkdir(parents=True)
    server = {"algorithm": "fedavg", "components": [{"id": "persistor", "args": {"algorithm": "{algorithm}", "seed": 3}}]}
    (config / "config_fed_server.json").write_text(json.dumps(server))
    assert job_persistor_args(tmp_path)[1] == {"algorithm": "fedavg", "seed": 3}
    server["components"][0]["args"]["top_k"] = "{top_k}"
    (config / "config_fed_server.json").write_text(json.dumps(server))
    with pytest.raises(ValueError, match="persistor argument top_k is '\\{top_k\\}' but the config defines no 'top_k'"):
        job_persistor_args(tmp_path)
    server["components"] = []
    (config / "config_fed_server.json").write_text(json.dumps(server))
    with pytest.raises(ValueError, match="no component with id 'persistor'"):
        job_persistor_args(tmp_path)
