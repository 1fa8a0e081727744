"""neurocast.registration.

Importing this package makes ITK (ANTs) single-threaded by default, so that registrations are
bit-for-bit reproducible: ITK's multi-threaded metrics sum in an order that varies between runs
(differences of about 0.01 mm). Set ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` beforehand, or call
:func:`neurocast.registration.threads.set_threads` before the first registration, to trade that
for speed.
"""

import os as _os

_os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
