/*
 * mm/posix-internal.h - what the default posix platform's two files share.
 *
 * posix_topology.c turns a topology description into a struct mv_topology (hwloc does the
 * reading); posix.c reserves each node's machine memory and provides the hooks. Nothing
 * here is part of the engine: the core never includes this header.
 *
 * Conventions the two files agree on:
 *  - os_index is the host OS's node number only where binding memory to it means
 *    something: the real machine ("real", NULL, "") when hwloc says the topology is this
 *    system. Synthetic and XML topologies (and a "real" one that hwloc was told through its
 *    own environment variables to read from elsewhere) get os_index = UINT32_MAX, and
 *    posix.c never binds such a node (it counts it neither as bound nor as refused).
 *  - Machine memory is split in 2 MiB granules: every node but the last gets
 *    (granules / nodes) granules, the last takes the remaining granules plus any bytes past
 *    the last whole granule, rounded down to whole 4 KiB frames. Frame numbers run
 *    contiguously from 0 in node order. Fewer granules than nodes is MV_EINVAL.
 *  - Distances follow ACPI SLIT: 10 on the diagonal, 10..255 elsewhere. A matrix hwloc
 *    reports that breaks this (a strange XML file) is replaced by 10 local / 20 remote.
 */
#ifndef MV_POSIX_INTERNAL_H
#define MV_POSIX_INTERNAL_H

#include <memvirt/posix.h>

#define MV__POSIX_GRANULE_SHIFT 21u /* 2 MiB */
#define MV__POSIX_GRANULE_FRAMES (1u << (MV__POSIX_GRANULE_SHIFT - MV_PAGE_SHIFT))

/* The environment variable read when a config names no topology. */
#define MV__POSIX_TOPOLOGY_ENV "MEMVIRT_TOPOLOGY"

/*
 * Read the nodes, CPUs and distances a description names into *out (zeroed first; no
 * memory ranges). 0, MV_EINVAL (a description hwloc or the distance parser refuses, more
 * than MV_MAX_NODES nodes), MV_ENOMEM, or MV_EIO (hwloc cannot read this machine).
 * *out is left zeroed on failure.
 */
int mv__posix_topology_read(const char *desc, struct mv_topology *out);

/*
 * Split mem_bytes across t's nodes as described above, filling first_mfn and nr_frames
 * (base is left alone). mem_bytes == 0 gives every node an empty range. MV_EINVAL when
 * there are fewer 2 MiB granules than nodes; t is unchanged then.
 */
int mv__posix_topology_split(struct mv_topology *t, uint64_t mem_bytes);

#endif
