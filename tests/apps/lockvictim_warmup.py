"""Warms a configured stage up while it is being imported: the call to the wrapped
``lockvictim.score`` runs under this module's import lock, and stagetrace cannot describe
its argument (an internal error it reports, the call itself unaffected)."""

import hooklock

hooklock.inside_import()

import lockvictim  # noqa: E402


class Unmeasurable:
    @property
    def shape(self):
        raise RuntimeError("no shape today")


assert lockvictim.score(3) == 3
WARM = lockvictim.score(Unmeasurable())
assert isinstance(WARM, Unmeasurable)  # the wrapped call's result, untouched
