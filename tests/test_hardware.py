import json
from itertools import pairwise

import networkx as nx
import pytest
import yaml

from hardware import Accelerator, Cluster, PlannerInputError, UnknownNameError, accelerators, cluster, clusters
from hardware.specs import Link, NodeGroup
from hardware.topology import graph, spanned_tier

ISSUE_CATALOG = {"a100-sxm-40gb", "a100-sxm-80gb", "a100-pcie-80gb", "h100-sxm", "h100-pcie", "h200-sxm", "b200",
                 "gb200", "mi300x", "ascend-910b", "ascend-910c"}
ISSUE_CLUSTERS = {"dgx-a100", "dgx-h100", "hgx-h200", "dgx-b200", "gb200-nvl72", "atlas-800t-a2", "atlas-800-a3",
                  "cloudmatrix384"}


def test_catalog_has_every_device_and_cluster_the_issue_names():
    assert set(accelerators()) >= ISSUE_CATALOG
    assert set(clusters()) >= ISSUE_CLUSTERS


@pytest.mark.parametrize("name", sorted(ISSUE_CATALOG))
def test_every_accelerator_number_has_a_source(name):
    assert accelerators()[name].missing_sources() == []


@pytest.mark.parametrize("name", sorted(ISSUE_CLUSTERS))
def test_every_cluster_number_has_a_source(name):
    assert clusters()[name].missing_sources() == []


def test_device_counts_and_domains():
    assert cluster("dgx-h100").num_devices == 8
    assert cluster("gb200-nvl72").groups[0].domain_size == 72
    cm = cluster("cloudmatrix384")
    assert cm.num_devices == 384 and cm.groups[0].domain_size == 384
    assert cluster("atlas-800-a3").groups[0].device.dies == 2


def test_xn_suffix_multiplies_nodes_and_domains():
    c = cluster("dgx-h100x4")
    assert c.num_devices == 32 and c.groups[0].num_domains == 4
    nvl = cluster("gb200-nvl72x2")
    assert nvl.num_devices == 144 and nvl.groups[0].num_domains == 2


@pytest.mark.parametrize("spec", [accelerators()["h100-sxm"], clusters()["dgx-h100"], clusters()["gb200-nvl72"]])
def test_specs_round_trip_yaml_and_json(spec):
    kind = type(spec)
    assert kind.model_validate(yaml.safe_load(yaml.safe_dump(spec.model_dump()))) == spec
    assert kind.model_validate_json(spec.model_dump_json()) == spec
    assert kind.model_json_schema()["type"] == "object"


def test_user_cluster_yaml(tmp_path):
    data = clusters()["dgx-h100"].model_dump()
    data["name"] = "my-cluster"
    data["groups"][0]["accelerator"] = "h100-sxm"
    data["groups"][0]["num_nodes"] = 3
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    c = cluster(str(path))
    assert c.name == "my-cluster" and c.num_devices == 24 and c.groups[0].device.name == "h100-sxm"


def test_unknown_cluster_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="did you mean 'dgx-h100'"):
        cluster("dgx-h10")


def test_unknown_field_in_yaml_is_named(tmp_path):
    data = clusters()["dgx-h100"].model_dump()
    data["groups"][0]["scaleup"]["bandwith"] = 1
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PlannerInputError, match=r"groups\.0\.scaleup\.bandwith.*unknown field"):
        cluster(str(path))


def test_malformed_yaml_and_bad_numbers(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(PlannerInputError, match="not valid YAML"):
        cluster(str(bad))
    data = clusters()["dgx-h100"].model_dump()
    data["groups"][0]["num_nodes"] = 0
    neg = tmp_path / "neg.json"
    neg.write_text(json.dumps(data))
    with pytest.raises(PlannerInputError, match="num_nodes"):
        cluster(str(neg))


def test_accelerator_rejects_nonpositive_peak():
    with pytest.raises(ValueError, match="peak_tflops"):
        Accelerator(name="x", vendor="y", peak_tflops={"bf16": 0}, hbm_gib=1, hbm_gbps=1, tdp_w=1, idle_w=1,
                    scaleup_gbps=1)


def test_topology_graph_and_spanned_tier():
    c = cluster("dgx-h100x2")
    g = graph(c)
    devices = [n for n, d in g.nodes(data=True) if d["kind"] == "device"]
    assert len(devices) == 16 and nx.is_connected(g)
    path = nx.shortest_path(g, (0, 0), (0, 9))
    assert {g.edges[a, b]["tier"] for a, b in pairwise(path)} == {"scaleup", "scaleout"}
    assert spanned_tier(c, [(0, 0), (0, 7)]).name == "nvlink4"
    assert spanned_tier(c, [(0, 0), (0, 8)]).name == "ib-ndr400"
    nvl = cluster("gb200-nvl72")
    assert spanned_tier(nvl, [(0, 0), (0, 71)]).name.startswith("nvlink")


def test_mixed_cluster_spans_the_slowest_network():
    h100, a100 = clusters()["dgx-h100"].groups[0], clusters()["dgx-a100"].groups[0]
    mixed = Cluster(name="mixed", groups=[h100, a100])
    assert mixed.num_devices == 16
    assert spanned_tier(mixed, [(0, 0), (1, 0)]).gbps == min(h100.scaleout.gbps, a100.scaleout.gbps)


def test_nodes_must_fill_domains():
    link = Link(name="l", gbps=1, latency_us=1)
    with pytest.raises(ValueError, match="multiple of nodes_per_domain"):
        NodeGroup(accelerator="h100-sxm", num_nodes=3, devices_per_node=4, nodes_per_domain=2, scaleup=link,
                  scaleout=link)
