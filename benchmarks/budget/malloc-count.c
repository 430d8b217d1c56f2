// An LD_PRELOAD allocation counter for the per-request budget (benchmarks/budget.sh and the
// allocation guard in make test). Counts calls, not bytes' lifetimes: malloc, calloc, realloc,
// the aligned allocators, and how many of those asked for 1 KiB or more. Real-time signal
// SIGRTMIN+3 (HAProxy owns SIGUSR1/2) appends one line
// "mallocs=N large=N frees=N locks=N casts=N retains=N releases=N" to $MALLOC_COUNT_FILE, so a
// running server can be read before and after a load without stopping it.
// Forwards to glibc's own entry points (no dlsym: it allocates).
//
// The other counts are calls made through the dynamic linker, so they see what a program calls,
// not what a library does inside itself: `pthread_mutex_lock` (NIO's locks; Swift's `Mutex` is
// inline atomics and a futex, not counted), `swift_dynamicCast` (NIO's `NIOAny` unwrapping of
// anything but bytes, `as?` on existentials) and `swift_retain`/`swift_release` (reference
// counting; the runtime's own and `swift_bridgeObject*`'s are not counted). The Swift entry points
// are found with dlsym at their first call. These are counted only
// between two SIGRTMIN+4 (off at start): an atomic add on every retain is CPU time a load that
// measures CPU must not pay.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static atomic_ulong mallocs, large, frees, locks, casts, retains, releases;
static atomic_bool counting_calls;

static inline void count_call(atomic_ulong *counter) {
    if (atomic_load_explicit(&counting_calls, memory_order_relaxed))
        atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
}

static inline void count(size_t size) {
    atomic_fetch_add_explicit(&mallocs, 1, memory_order_relaxed);
    if (size >= 1024) atomic_fetch_add_explicit(&large, 1, memory_order_relaxed);
}

void *malloc(size_t size) { count(size); return __libc_malloc(size); }
void *calloc(size_t n, size_t size) { count(n * size); return __libc_calloc(n, size); }
void *realloc(void *p, size_t size) { count(size); return __libc_realloc(p, size); }
void free(void *p) { if (p) atomic_fetch_add_explicit(&frees, 1, memory_order_relaxed); __libc_free(p); }
void *memalign(size_t align, size_t size) { count(size); return __libc_memalign(align, size); }
void *aligned_alloc(size_t align, size_t size) { count(size); return __libc_memalign(align, size); }
int posix_memalign(void **out, size_t align, size_t size) {
    count(size);
    void *p = __libc_memalign(align, size);
    if (!p) return 12; // ENOMEM
    *out = p;
    return 0;
}

extern int __pthread_mutex_lock(pthread_mutex_t *);

int pthread_mutex_lock(pthread_mutex_t *mutex) {
    count_call(&locks);
    return __pthread_mutex_lock(mutex);
}

typedef bool (*dynamic_cast_fn)(void *, void *, const void *, const void *, size_t);
typedef void *(*retain_fn)(void *);
typedef void (*release_fn)(void *);
static _Atomic(void *) real_dynamic_cast, real_retain, real_release;

// The runtime's own entry point, looked up at the first call (racing threads find the same one).
static void *real_symbol(_Atomic(void *) *slot, const char *name) {
    void *symbol = atomic_load_explicit(slot, memory_order_relaxed);
    if (symbol) return symbol;
    symbol = dlsym(RTLD_NEXT, name);
    if (!symbol) abort();  // only Swift programs call these, and they have the runtime loaded
    atomic_store(slot, symbol);
    return symbol;
}

bool swift_dynamicCast(void *dest, void *src, const void *srcType, const void *targetType, size_t flags) {
    count_call(&casts);
    dynamic_cast_fn real = (dynamic_cast_fn)real_symbol(&real_dynamic_cast, "swift_dynamicCast");
    return real(dest, src, srcType, targetType, flags);
}

void *swift_retain(void *object) {
    count_call(&retains);
    return ((retain_fn)real_symbol(&real_retain, "swift_retain"))(object);
}

void swift_release(void *object) {
    count_call(&releases);
    ((release_fn)real_symbol(&real_release, "swift_release"))(object);
}

static char *put(char *at, const char *text) { while (*text) *at++ = *text++; return at; }
static char *put_number(char *at, unsigned long value) {
    char digits[24];
    int n = 0;
    do { digits[n++] = (char)('0' + value % 10); value /= 10; } while (value);
    while (n) *at++ = digits[--n];
    return at;
}

// Async-signal-safe: no allocation, no stdio.
static void dump(int signo) {
    (void)signo;
    const char *path = getenv("MALLOC_COUNT_FILE");
    if (!path) return;
    char line[256], *at = line;
    at = put(at, "mallocs="); at = put_number(at, atomic_load(&mallocs));
    at = put(at, " large="); at = put_number(at, atomic_load(&large));
    at = put(at, " frees="); at = put_number(at, atomic_load(&frees));
    at = put(at, " locks="); at = put_number(at, atomic_load(&locks));
    at = put(at, " casts="); at = put_number(at, atomic_load(&casts));
    at = put(at, " retains="); at = put_number(at, atomic_load(&retains));
    at = put(at, " releases="); at = put_number(at, atomic_load(&releases));
    *at++ = '\n';
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) return;
    ssize_t ignored = write(fd, line, (size_t)(at - line));
    (void)ignored;
    close(fd);
}

static void toggle_call_counting(int signo) {
    (void)signo;
    atomic_store(&counting_calls, !atomic_load(&counting_calls));
}

__attribute__((constructor)) static void install(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = dump;
    action.sa_flags = SA_RESTART;
    sigaction(SIGRTMIN + 3, &action, NULL);
    action.sa_handler = toggle_call_counting;
    sigaction(SIGRTMIN + 4, &action, NULL);
}
