"""The MetaStudio endpoints the official SDK knows, by region.

Other clouds or regions work with an explicit `endpoint:` in the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

REGION_ENDPOINTS: Mapping[str, str] = MappingProxyType(
    {
        "cn-north-4": "https://metastudio.cn-north-4.myhuaweicloud.com",
        "cn-east-3": "https://metastudio.cn-east-3.myhuaweicloud.com",
    }
)
