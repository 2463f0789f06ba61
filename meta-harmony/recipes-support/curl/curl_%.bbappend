# Active only with "harmony" in DISTRO_FEATURES (oelint-adv misreads this line).
# nooelint: oelint.spaces.lineend
require ${@bb.utils.contains('DISTRO_FEATURES', 'harmony', '${BPN}_harmony.inc', '', d)}
