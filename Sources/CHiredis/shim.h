#ifndef BARBERPRO_CHIREDIS_SHIM_H
#define BARBERPRO_CHIREDIS_SHIM_H

// Only the RESP reader and the reply type are used (Sources/RedisClient/RESPParser.swift);
// connections, timeouts and formatting are done in Swift over SwiftNIO.
// No `pkgConfig:` on this target: hiredis.pc carries -D_FILE_OFFSET_BITS=64, which SwiftPM
// would warn about on every build; the headers live in /usr/include/hiredis anyway.
#include <hiredis/read.h>
#include <hiredis/hiredis.h>

#endif
