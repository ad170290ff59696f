"""open_backend and the Backend protocol (nftproxy.kernel.backend)."""

from __future__ import annotations

import pytest

from nftproxy.kernel.backend import open_backend
from nftproxy.kernel.errors import NftError


@pytest.mark.kernel
def test_opening_a_missing_namespace_is_a_clear_error():
    with pytest.raises(NftError, match="does not exist"):
        open_backend("nftproxy-no-such-namespace")
