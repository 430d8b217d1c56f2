#ifndef GATEWAY_CNGHTTP2_SHIM_H
#define GATEWAY_CNGHTTP2_SHIM_H
#include <nghttp2/nghttp2.h>

/* Object-like macros Swift does not import. */
static inline int32_t gw_NGHTTP2_INITIAL_WINDOW_SIZE(void) { return NGHTTP2_INITIAL_WINDOW_SIZE; }
#endif
