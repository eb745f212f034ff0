/*
 * memvirt/posix.h - the default platform for a Linux host.
 *
 * Metadata comes from a private jemalloc arena (plain malloc in sanitizer builds); machine
 * memory is one mmap(MAP_NORESERVE) reservation per node, bound to the node with mbind
 * where the node is real (advisory and counted where binding is refused), never touched
 * when allocated and given back with madvise(MADV_DONTNEED); the topology comes from hwloc:
 * the real machine, a synthetic description or an XML file.
 *
 * Only present when MV_HAVE_POSIX_PLATFORM is 1; a core built without it has no outside
 * dependency and the embedder brings its own struct mv_platform.
 */
#ifndef MEMVIRT_POSIX_H
#define MEMVIRT_POSIX_H

#include <memvirt/platform.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Topology descriptions, in `topology` below or the MEMVIRT_TOPOLOGY environment variable
 * (used when `topology` is NULL):
 *   NULL or "" or "real"            the machine this runs on (hwloc)
 *   "xml:PATH" or a path ending .xml an hwloc XML export
 *   anything else                   an hwloc synthetic string, e.g. "pack:2 numa:1 core:4 pu:1",
 *                                   optionally followed by "; distances=10,20,20,10" (row
 *                                   major, nodes x nodes). Without distances: 10 local, 20 remote.
 */
struct mv_posix_config {
    size_t size;          /* sizeof(struct mv_posix_config) */
    uint64_t mem_bytes;   /* machine memory, split evenly across the nodes (2 MiB granules) */
    const char *topology; /* see above */
    uint32_t flags;       /* MV_POSIX_* */
};

#define MV_POSIX_PLAIN_MALLOC 0x1u /* metadata from malloc even where jemalloc is built in */
#define MV_POSIX_NO_BIND 0x2u      /* do not mbind machine memory to its node */

MV_API int mv_posix_platform_create(const struct mv_posix_config *cfg, struct mv_platform **out);
MV_API void mv_posix_platform_destroy(struct mv_platform *p);

struct mv_posix_stats {
    size_t size;
    uint64_t meta_bytes;        /* metadata bytes currently allocated */
    uint64_t reserved_bytes;    /* machine memory reserved (mmap) */
    uint64_t bind_ok;           /* node ranges bound with mbind */
    uint64_t bind_refused;      /* node ranges left with advisory placement */
    uint64_t decommit_calls;    /* madvise calls issued */
    uint64_t decommit_frames;   /* frames given back */
    uint32_t slots_in_use;      /* threads holding a slot */
    uint32_t jemalloc_arena;    /* the arena used, or UINT32_MAX with malloc */
};
MV_API int mv_posix_platform_stats(const struct mv_platform *p, struct mv_posix_stats *st);

/*
 * Read the topology a description names without reserving memory (mem_bytes split as above):
 * for tools that print it, and for tests.
 */
MV_API int mv_posix_topology_load(const char *desc, uint64_t mem_bytes, struct mv_topology *out);

#ifdef __cplusplus
}
#endif
#endif
