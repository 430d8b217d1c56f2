// An LD_PRELOAD allocation counter for the per-request budget (benchmarks/budget.sh and the
// allocation guard in make test). Counts calls, not bytes' lifetimes: malloc, calloc, realloc,
// the aligned allocators, and how many of those asked for 1 KiB or more. Real-time signal
// SIGRTMIN+3 (HAProxy owns SIGUSR1/2) appends one line "mallocs=N large=N frees=N" to
// $MALLOC_COUNT_FILE, so a running server can be read before and after a load without stopping it.
// Forwards to glibc's own entry points (no dlsym: it allocates).
#define _GNU_SOURCE
#include <fcntl.h>
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

static atomic_ulong mallocs, large, frees;

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
    char line[128], *at = line;
    at = put(at, "mallocs="); at = put_number(at, atomic_load(&mallocs));
    at = put(at, " large="); at = put_number(at, atomic_load(&large));
    at = put(at, " frees="); at = put_number(at, atomic_load(&frees));
    *at++ = '\n';
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) return;
    ssize_t ignored = write(fd, line, (size_t)(at - line));
    (void)ignored;
    close(fd);
}

__attribute__((constructor)) static void install(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = dump;
    action.sa_flags = SA_RESTART;
    sigaction(SIGRTMIN + 3, &action, NULL);
}
