"""backend='ray' on a real two-node Ray cluster (ray.cluster_utils.Cluster, both nodes on
this machine, loopback only): actors on both nodes give the inline batches, and losing a
whole node mid-epoch, replaced by a new one, changes nothing in the batches."""

from __future__ import annotations

import numpy as np
import pytest

import stoker
from conftest import noisy
from epochs import assert_same, epochs_of, held_after_the_first_batch
from test_ray import TESTS, only_loopback

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    if not only_loopback():
        pytest.skip("Ray tests run in a private network namespace: make test, or "
                    "tests/in-private-network python -m pytest tests/test_ray_cluster.py")
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(TESTS)}})
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def actor_nodes(loader) -> set[str]:
    return {actor.node_id for actor in loader._executor._actors}


def test_actors_on_both_nodes_give_the_inline_batches(cluster, images):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=16, transform=noisy, seed=8, workers=0) as loader:
        expected = epochs_of(loader, 2)
    with stoker.Loader(data, batch_size=16, transform=noisy, seed=8, backend="ray") as loader:
        assert loader.workers == 4  # every CPU of the cluster
        assert_same(epochs_of(loader, 2), expected)
        assert len(actor_nodes(loader)) == 2
        # The head node's actors write into the consumer's slots; the other node's
        # batches come through the object store (one machine, but told apart by node).
        executor = loader._get_executor()
        assert executor.landed > 0 and executor.shipped > 0


def test_a_lost_node_is_replaced_and_the_epoch_is_unchanged(cluster, images, tmp_path):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=8, transform=noisy, seed=9, workers=0) as loader:
        expected = epochs_of(loader, 1)
    gate = tmp_path / "open"  # every actor holds tasks at it until the node is replaced
    held = held_after_the_first_batch(data, gate, batch_size=8, seed=9, then=noisy)
    with stoker.Loader(data, batch_size=8, transform=held, seed=9, backend="ray",
                       max_worker_restarts=4) as loader:
        epoch = iter(loader)
        got = [tuple(np.copy(a) for a in next(epoch))]
        head = ray.get_runtime_context().get_node_id()
        assert len(actor_nodes(loader)) == 2
        lost = next(node for node in cluster.worker_nodes)
        cluster.remove_node(lost)
        cluster.add_node(num_cpus=2)  # the replacement, where Ray restarts the actors
        gate.touch()
        got += [tuple(np.copy(a) for a in batch) for batch in epoch]
        assert_same([got], expected)
        assert len(loader.crashes) == 2  # the two actors of the lost node
        assert head in actor_nodes(loader) and len(actor_nodes(loader)) == 2
