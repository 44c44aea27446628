"""The words havs shares with IPVS and ipvsadm, defined once.

A forwarding method has four names: the config's (`nat`, `dr`, `tun`), havs's own (`masq`, `route`,
`tunnel`, `local`: the value, also what JSON and logs show), the kernel's constant
(IP_VS_CONN_F_MASQ … _DROUTE) and ipvsadm's (`Masq` in a listing, `-m` in a rule). Every module that
needs one of them asks `Forwarding`; none keeps its own map.
"""

from __future__ import annotations

from enum import StrEnum


class Forwarding(StrEnum):
    """An IPVS forwarding method. A StrEnum: equal to its value, so `d.forwarding == "masq"` holds."""

    MASQ = "masq"
    LOCAL = "local"
    TUNNEL = "tunnel"
    ROUTE = "route"

    @classmethod
    def from_config(cls, word: str) -> Forwarding:
        """`nat` / `dr` / `tun` (the config's words) → the method; ValueError on anything else."""
        try:
            return _BY_CONFIG[word]
        except KeyError:
            raise ValueError(f"forwarding is one of nat, dr, tun, not {word!r}") from None

    @classmethod
    def from_kernel(cls, code: int) -> Forwarding:
        """The kernel's IP_VS_CONN_F_FWD_MASK bits of a destination's flags → the method."""
        return _BY_KERNEL[code & 0x7]

    @property
    def kernel(self) -> int:
        """IP_VS_CONN_F_MASQ 0, _LOCALNODE 1, _TUNNEL 2, _DROUTE 3."""
        return _KERNEL[self]

    @property
    def config_word(self) -> str | None:
        """The config's word; `local` has none (the kernel picks it for a local address)."""
        return _CONFIG.get(self)

    @property
    def ipvsadm(self) -> str:
        """ipvsadm -Ln's Forward column: Masq, Local, Tunnel, Route."""
        return _IPVSADM[self]

    @property
    def ipvsadm_switch(self) -> str:
        """ipvsadm -Sn's rule switch; ipvsadm saves Local as -g (it has no switch of its own)."""
        return _SWITCH[self]


_KERNEL = {Forwarding.MASQ: 0, Forwarding.LOCAL: 1, Forwarding.TUNNEL: 2, Forwarding.ROUTE: 3}
_BY_KERNEL = {code: fwd for fwd, code in _KERNEL.items()}
_CONFIG = {Forwarding.MASQ: "nat", Forwarding.ROUTE: "dr", Forwarding.TUNNEL: "tun"}
_BY_CONFIG = {word: fwd for fwd, word in _CONFIG.items()}
_IPVSADM = {Forwarding.MASQ: "Masq", Forwarding.LOCAL: "Local", Forwarding.TUNNEL: "Tunnel",
            Forwarding.ROUTE: "Route"}
_SWITCH = {Forwarding.MASQ: "-m", Forwarding.LOCAL: "-g", Forwarding.TUNNEL: "-i", Forwarding.ROUTE: "-g"}
BY_VALUE: dict[str, Forwarding] = {f.value: f for f in Forwarding}
