#include "CBuildInfo.h"

#ifndef GATEWAY_GIT_COMMIT
#define GATEWAY_GIT_COMMIT "unknown"
#endif

const char *gateway_build_commit(void) { return GATEWAY_GIT_COMMIT; }
