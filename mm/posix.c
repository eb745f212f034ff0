/*
 * mm/posix.c - the default platform on a Linux host (memvirt/posix.h).
 *
 * What it owns, per platform instance (struct posix_ctx, reached through p->ctx so that a
 * wrapper holding a copy of the struct mv_platform works the same):
 *  - the topology (posix_topology.c reads it) and one mmap(MAP_NORESERVE) reservation per
 *    node, marked MADV_NOHUGEPAGE (huge pages would blur resident-memory figures) and
 *    mbind()ed to its node where the node is real; a refused mbind (EPERM in containers)
 *    leaves advisory placement and is counted. Synthetic and XML nodes (os_index
 *    UINT32_MAX) are never bound and counted neither way. Frames are committed by the first
 *    write and decommitted with madvise(MADV_DONTNEED), after which they read as zero.
 *  - metadata memory: a private jemalloc arena (mallocx with the tcache off, so nothing
 *    lingers in a thread's cache when the arena is destroyed) or, in sanitizer builds and
 *    with MV_POSIX_PLAIN_MALLOC, calloc / posix_memalign.
 *  - counters for mv_posix_platform_stats(), all atomic or written before create returns.
 *
 * Process-wide: the slot registry. A thread takes the lowest free slot on its first call
 * (a CAS on a 256-bit map) and keeps it in a thread-local; a pthread key destructor gives
 * it back when the thread exits, so ids are reused. Taking a slot is an acquire, giving it
 * back a release, so whatever the engine kept per slot passes cleanly from the old owner
 * to the new one. Slots are shared by every posix platform in the process. A forked child
 * keeps the parent's map (the parent's other threads' slots stay taken there), and the
 * key's destructor lives in this library, which must stay loaded while such threads live.
 *
 * No locks: hooks touch only atomics and the caller's own thread-local. Nothing prints;
 * the log, trace, TLB-flush and commit hooks are NULL (the contract allows it; embedders
 * and the tests wrap the platform and set their own).
 */
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/membarrier.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <time.h>

#include <numaif.h>

#if defined(MV_USE_JEMALLOC) && MV_USE_JEMALLOC
#include <jemalloc/jemalloc.h>
#define HAVE_JEMALLOC 1
#else
#define HAVE_JEMALLOC 0
#endif

#include "posix-internal.h"

#define POSIX_MAGIC 0x706f7378u /* "posx" */
#define KNOWN_FLAGS (MV_POSIX_PLAIN_MALLOC | MV_POSIX_NO_BIND)
#define MIN_MEM_BYTES (1ull << MV__POSIX_GRANULE_SHIFT)
#define NO_ARENA UINT32_MAX

struct posix_ctx {
    struct mv_platform plat; /* handed out by create; plat.ctx points back here */
    uint32_t magic;
    uint32_t flags;
    uint32_t arena;          /* jemalloc arena index, or NO_ARENA for malloc */
    struct mv_topology topo; /* base filled once the reservations exist */
    uint64_t reserved_bytes; /* these three are written before create returns */
    uint64_t bind_ok;
    uint64_t bind_refused;
    _Atomic uint64_t meta_bytes;
    _Atomic uint64_t decommit_calls;
    _Atomic uint64_t decommit_frames;
};

static struct posix_ctx *ctx_of(const struct mv_platform *p)
{
    return p->ctx;
}

/* ---- Metadata ----------------------------------------------------------------------------- */

/*
 * calloc only for small alignments: an allocator may align a small block to its size
 * class only (jemalloc gives an 8-byte block 8-byte alignment), not to max_align_t.
 */
static void *plain_alloc(size_t size, size_t align)
{
    void *ptr = NULL;
    if (align <= sizeof(void *))
        return calloc(1, size);
    if (posix_memalign(&ptr, align, size) != 0)
        return NULL;
    memset(ptr, 0, size);
    return ptr;
}

static void *meta_alloc(const struct mv_platform *p, size_t size, size_t align)
{
    struct posix_ctx *c = ctx_of(p);
    void *ptr;

    if (align == 0)
        align = alignof(max_align_t);
    if (size == 0 || align > MV_PAGE_SIZE || (align & (align - 1)) != 0)
        return NULL;
#if HAVE_JEMALLOC
    if (c->arena != NO_ARENA)
        ptr = mallocx(size, MALLOCX_ARENA(c->arena) | MALLOCX_TCACHE_NONE | MALLOCX_ZERO |
                                MALLOCX_ALIGN(align));
    else
#endif
        ptr = plain_alloc(size, align);
    if (ptr)
        atomic_fetch_add_explicit(&c->meta_bytes, size, memory_order_relaxed);
    return ptr;
}

static void meta_free(const struct mv_platform *p, void *ptr, size_t size)
{
    struct posix_ctx *c = ctx_of(p);

    if (!ptr)
        return;
#if HAVE_JEMALLOC
    if (c->arena != NO_ARENA)
        dallocx(ptr, MALLOCX_TCACHE_NONE);
    else
#endif
        free(ptr);
    atomic_fetch_sub_explicit(&c->meta_bytes, size, memory_order_relaxed);
}

static int arena_create(struct posix_ctx *c)
{
    c->arena = NO_ARENA;
#if HAVE_JEMALLOC
    if (!(c->flags & MV_POSIX_PLAIN_MALLOC)) {
        unsigned ind;
        size_t sz = sizeof(ind);
        if (mallctl("arenas.create", &ind, &sz, NULL, 0) != 0)
            return MV_ENOMEM;
        c->arena = ind;
    }
#endif
    return 0;
}

static void arena_destroy(struct posix_ctx *c)
{
#if HAVE_JEMALLOC
    if (c->arena != NO_ARENA) {
        char name[32];
        snprintf(name, sizeof(name), "arena.%u.destroy", c->arena);
        (void)mallctl(name, NULL, NULL, NULL, 0);
    }
#endif
    c->arena = NO_ARENA;
}

/* ---- Machine memory ------------------------------------------------------------------- */

/* Bind [base, base + len) to one OS node: 0, or -1 when the kernel (or the node) refuses. */
static int bind_node(void *base, size_t len, uint32_t os_index)
{
    unsigned long mask[1024 / (8 * sizeof(unsigned long))] = {0};
    const unsigned bits = 8 * sizeof(unsigned long);

    if (os_index >= 8 * sizeof(mask))
        return -1;
    mask[os_index / bits] = 1ul << (os_index % bits);
    /* maxnode counts one past the last bit the kernel reads. */
    return mbind(base, len, MPOL_BIND, mask, 8 * sizeof(mask) + 1, 0) == 0 ? 0 : -1;
}

static void unmap_nodes(struct posix_ctx *c)
{
    for (uint32_t i = 0; i < c->topo.nr_nodes; i++) {
        struct mv_node_desc *nd = &c->topo.node[i];
        if (nd->base)
            munmap(nd->base, (size_t)nd->nr_frames << MV_PAGE_SHIFT);
        nd->base = NULL;
    }
}

/*
 * One reservation per node, laid side by side in one address window in frame order, so
 * that a machine frame's address is one addition away for the engine (it notices).
 */
static int map_nodes(struct posix_ctx *c)
{
    size_t total = 0;
    for (uint32_t i = 0; i < c->topo.nr_nodes; i++) {
        if (c->topo.node[i].nr_frames > (SIZE_MAX >> MV_PAGE_SHIFT) - (total >> MV_PAGE_SHIFT))
            return MV_ENOMEM;
        total += (size_t)c->topo.node[i].nr_frames << MV_PAGE_SHIFT;
    }
    uint8_t *window = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                           -1, 0);
    if (window == MAP_FAILED)
        return MV_ENOMEM;
    size_t off = 0;
    for (uint32_t i = 0; i < c->topo.nr_nodes; i++) {
        struct mv_node_desc *nd = &c->topo.node[i];
        size_t len = (size_t)nd->nr_frames << MV_PAGE_SHIFT;
        void *base = mmap(window + off, len, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
        off += len;
        if (base == MAP_FAILED) {
            munmap(window + off - len, total - (off - len)); /* the rest of the window */
            goto fail;
        }
        nd->base = base;
        c->reserved_bytes += len;
        (void)madvise(base, len, MADV_NOHUGEPAGE); /* EINVAL without THP: nothing to do */
        if (nd->os_index == UINT32_MAX || (c->flags & MV_POSIX_NO_BIND))
            continue;
        if (bind_node(base, len, nd->os_index) == 0)
            c->bind_ok++;
        else
            c->bind_refused++;
    }
    return 0;
fail:
    unmap_nodes(c);
    c->reserved_bytes = c->bind_ok = c->bind_refused = 0;
    return MV_ENOMEM;
}

/* The node whose range holds mfn, or -1. */
static int node_of(const struct mv_topology *t, mv_mfn_t mfn)
{
    for (uint32_t i = 0; i < t->nr_nodes; i++)
        if (mfn >= t->node[i].first_mfn && mfn - t->node[i].first_mfn < t->node[i].nr_frames)
            return (int)i;
    return -1;
}

/*
 * Checks the whole range first (MV_ERANGE changes nothing), then issues one madvise per
 * node the range crosses. MV_EIO if the kernel refuses one: the nodes before it are done.
 */
static int mem_decommit(const struct mv_platform *p, mv_mfn_t first, uint64_t count)
{
    struct posix_ctx *c = ctx_of(p);
    const struct mv_topology *t = &c->topo;
    mv_mfn_t end = first + count;

    if (end < first)
        return MV_ERANGE;
    for (int pass = 0; pass < 2; pass++) {
        for (mv_mfn_t cur = first; cur < end;) {
            int i = node_of(t, cur);
            if (i < 0)
                return MV_ERANGE;
            const struct mv_node_desc *nd = &t->node[i];
            mv_mfn_t stop = nd->first_mfn + nd->nr_frames;
            if (stop > end)
                stop = end;
            if (pass == 1) {
                char *addr = (char *)nd->base + ((size_t)(cur - nd->first_mfn) << MV_PAGE_SHIFT);
                if (madvise(addr, (size_t)(stop - cur) << MV_PAGE_SHIFT, MADV_DONTNEED) != 0)
                    return MV_EIO;
                atomic_fetch_add_explicit(&c->decommit_calls, 1, memory_order_relaxed);
                atomic_fetch_add_explicit(&c->decommit_frames, stop - cur, memory_order_relaxed);
            }
            cur = stop;
        }
    }
    return 0;
}

/* ---- Clock ---------------------------------------------------------------------------- */

static uint64_t clock_ns(const struct mv_platform *p)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- Slots (process-wide) --------------------------------------------------------------- */

#define SLOT_WORDS (MV_MAX_SLOTS / 64)

static _Atomic uint64_t slot_map[SLOT_WORDS];
static pthread_once_t slot_once = PTHREAD_ONCE_INIT;
static pthread_key_t slot_key;
static bool slot_key_ok;
/* initial-exec: the fast path is one TLS load, with no __tls_get_addr call. */
static _Thread_local uint32_t my_slot __attribute__((tls_model("initial-exec"))) = MV_SLOT_NONE;

static void slot_put(uint32_t slot)
{
    atomic_fetch_and_explicit(&slot_map[slot / 64], ~(1ull << (slot % 64)),
                              memory_order_release);
}

/* The key's destructor: runs when a thread that holds a slot exits. */
static void slot_exit(void *v)
{
    uint32_t slot = (uint32_t)((uintptr_t)v - 1);
    my_slot = MV_SLOT_NONE;
    slot_put(slot);
}

static void slot_key_create(void)
{
    slot_key_ok = pthread_key_create(&slot_key, slot_exit) == 0;
}

static uint32_t slot_register(void)
{
    pthread_once(&slot_once, slot_key_create);
    if (!slot_key_ok)
        return MV_SLOT_NONE;
    for (uint32_t w = 0; w < SLOT_WORDS; w++) {
        uint64_t cur = atomic_load_explicit(&slot_map[w], memory_order_relaxed);
        while (~cur != 0) {
            uint64_t bit = ~cur & (cur + 1); /* lowest clear bit */
            if (!atomic_compare_exchange_weak_explicit(&slot_map[w], &cur, cur | bit,
                                                       memory_order_acquire,
                                                       memory_order_relaxed))
                continue;
            uint32_t slot = w * 64 + (uint32_t)__builtin_ctzll(bit);
            if (pthread_setspecific(slot_key, (void *)(uintptr_t)(slot + 1)) != 0) {
                slot_put(slot);
                return MV_SLOT_NONE;
            }
            my_slot = slot;
            return slot;
        }
    }
    return MV_SLOT_NONE; /* all taken: the engine takes its slot-less paths */
}

/* Every thread of the process runs a full barrier before this returns. */
static void barrier_all(const struct mv_platform *p)
{
    (void)p;
    syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
}

static uint32_t slot_id(const struct mv_platform *p)
{
    uint32_t s = my_slot;
    if (__builtin_expect(s != MV_SLOT_NONE, 1))
        return s;
    return slot_register();
}

static uint32_t slots_in_use(void)
{
    uint32_t n = 0;
    for (uint32_t w = 0; w < SLOT_WORDS; w++)
        n += (uint32_t)__builtin_popcountll(
            atomic_load_explicit(&slot_map[w], memory_order_relaxed));
    return n;
}

/* ---- Create, destroy, stats ------------------------------------------------------------ */

/* Copy the caller's size-tagged config into a zeroed one of our size. */
static int read_config(const struct mv_posix_config *ucfg, struct mv_posix_config *cfg)
{
    size_t size;

    if (!ucfg)
        return MV_EINVAL;
    memcpy(&size, ucfg, sizeof(size));
    if (size < offsetof(struct mv_posix_config, flags) + sizeof(uint32_t))
        return MV_EINVAL;
    for (size_t i = sizeof(*cfg); i < size; i++)
        if (((const unsigned char *)ucfg)[i] != 0)
            return MV_E2BIG;
    memset(cfg, 0, sizeof(*cfg));
    memcpy(cfg, ucfg, size < sizeof(*cfg) ? size : sizeof(*cfg));
    return 0;
}

MV_API int mv_posix_platform_create(const struct mv_posix_config *ucfg, struct mv_platform **out)
{
    struct mv_posix_config cfg;
    int rc = read_config(ucfg, &cfg);

    if (rc)
        return rc;
    if (!out || (cfg.flags & ~KNOWN_FLAGS) || cfg.mem_bytes < MIN_MEM_BYTES)
        return MV_EINVAL;
    struct posix_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return MV_ENOMEM;
    c->magic = POSIX_MAGIC;
    c->flags = cfg.flags;
    c->arena = NO_ARENA;
    atomic_init(&c->meta_bytes, 0);
    atomic_init(&c->decommit_calls, 0);
    atomic_init(&c->decommit_frames, 0);

    const char *desc = cfg.topology ? cfg.topology : getenv(MV__POSIX_TOPOLOGY_ENV);
    rc = mv__posix_topology_read(desc, &c->topo);
    if (!rc)
        rc = mv__posix_topology_split(&c->topo, cfg.mem_bytes);
    if (!rc)
        rc = arena_create(c);
    if (!rc)
        rc = map_nodes(c);
    if (rc) {
        arena_destroy(c);
        free(c);
        return rc;
    }

    /* Asymmetric barriers for the engine's lock-free readers, where the kernel has them. */
    bool membarrier_ok =
        syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;

    c->plat = (struct mv_platform){
        .size = sizeof(struct mv_platform),
        .ctx = c,
        .meta_alloc = meta_alloc,
        .meta_free = meta_free,
        .topology = &c->topo,
        .mem_commit = NULL,
        .mem_decommit = mem_decommit,
        .log = NULL,
        .trace = NULL,
        .clock_ns = clock_ns,
        .tlb_flush = NULL,
        .max_slots = MV_MAX_SLOTS,
        .slot_id = slot_id,
        .barrier_all = membarrier_ok ? barrier_all : NULL,
    };
    *out = &c->plat;
    return 0;
}

MV_API void mv_posix_platform_destroy(struct mv_platform *p)
{
    if (!p)
        return;
    struct posix_ctx *c = ctx_of(p);
    if (!c || c->magic != POSIX_MAGIC)
        return;
    unmap_nodes(c);
    arena_destroy(c);
    c->magic = 0;
    free(c);
}

MV_API int mv_posix_platform_stats(const struct mv_platform *p, struct mv_posix_stats *st)
{
    if (!p || !st || st->size < sizeof(*st))
        return MV_EINVAL;
    struct posix_ctx *c = ctx_of(p);
    if (!c || c->magic != POSIX_MAGIC)
        return MV_EINVAL;
    size_t size = st->size;
    memset(st, 0, size); /* fields a newer caller knows and we do not read as zero */
    st->size = size;
    st->meta_bytes = atomic_load_explicit(&c->meta_bytes, memory_order_relaxed);
    st->reserved_bytes = c->reserved_bytes;
    st->bind_ok = c->bind_ok;
    st->bind_refused = c->bind_refused;
    st->decommit_calls = atomic_load_explicit(&c->decommit_calls, memory_order_relaxed);
    st->decommit_frames = atomic_load_explicit(&c->decommit_frames, memory_order_relaxed);
    st->slots_in_use = slots_in_use();
    st->jemalloc_arena = c->arena;
    return 0;
}
