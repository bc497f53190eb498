// liburing.h defines _XOPEN_SOURCE and _GNU_SOURCE before including system
// headers. Were those macros to take effect here, this module's fd_set and
// friends would differ from the Glibc module's and Swift would refuse to mix
// them. Including <features.h> first fixes the feature set to the default
// one, so the later definitions are inert.
#include <features.h>
#include <liburing.h>
