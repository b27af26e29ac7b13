"""The address external servers reach the trainer at for the weight update group (issue 18).

SGLang's ``/init_weights_update_group`` takes ``master_address``: where the group's store (on
the trainer) listens. Miles passes Ray's node address and has no flag for it; here
``weight_sync_master_address`` (``--weight-sync-master-address``) or the ``MILES_HOST_IP``
environment variable (Miles's override of this host's address) sets it, else it is picked from
the route to the first remote server. A malformed value is a ConfigError naming the flag; one
that is not an address of this machine, or loopback with remote servers, fails the Trainer's
start before any weights load.
"""

from __future__ import annotations

import pytest

from miles_sdk import Config, ConfigError


@pytest.mark.parametrize(
    ("address", "wrong"),
    [
        ("http://10.0.0.1", "is not an IP address or host name"),
        ("10.0.0.1:29500", "is not an IP address or host name"),
        ("", "is not an IP address or host name"),
        ("two words", "is not an IP address or host name"),
        ("0.0.0.0", "is not an address the servers can connect to"),
    ],
)
def test_a_malformed_master_address_is_named_with_the_flag(address: str, wrong: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_args(["--weight-sync-method", "distributed", "--weight-sync-master-address", address])
    assert "--weight-sync-master-address" in str(info.value) and wrong in str(info.value), str(info.value)


def test_a_master_address_without_the_group_sync_is_refused() -> None:
    with pytest.raises(ConfigError, match="weight_sync_method is 'disk'"):
        Config.from_args(["--weight-sync-master-address", "10.0.0.1"])


@pytest.mark.parametrize("address", ["10.0.0.1", "trainer-0.cluster.local", "localhost", "fd00::1"])
def test_an_address_or_host_name_is_accepted(address: str) -> None:
    config = Config.from_args(["--weight-sync-method", "distributed", "--weight-sync-master-address", address])
    assert config.weight_sync_master_address == address
