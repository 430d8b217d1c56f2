#ifndef GATEWAY_CBUILDINFO_H
#define GATEWAY_CBUILDINFO_H

/// The git commit the binary was built from, or "unknown".
const char *gateway_build_commit(void);

#endif
