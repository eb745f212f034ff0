/*
 * mm/posix_topology.c - the machine as the posix platform describes it, read through hwloc.
 *
 * A description (memvirt/posix.h) names one of three sources: the machine this runs on,
 * an hwloc XML export, or an hwloc synthetic string with an optional "; distances=..."
 * suffix. Every source goes through one hwloc topology and one read-out: the nodes are
 * hwloc's NUMA nodes in logical order, a node's CPUs are the weight of its cpuset, and the
 * distance matrix is the first latency matrix hwloc holds over all the nodes. hwloc 2.9
 * synthetic strings carry no distances, so the suffix is validated here and added to the
 * hwloc topology with the distances API before the read-out, which then cannot tell it
 * from a matrix the OS gave.
 *
 * Invariants of what comes out (see posix-internal.h for the conventions):
 *  - 1 <= nr_nodes <= MV_MAX_NODES, distance[i][i] == 10, 10 <= distance[i][j] <= 255;
 *  - os_index is UINT32_MAX unless the node is a real node of this host;
 *  - ranges are contiguous from mfn 0 in node order, base left NULL (posix.c maps them).
 *
 * No state, no locks: each call builds and destroys its own hwloc topology. Nothing here
 * prints; hwloc stays silent unless its own *_VERBOSE environment variables are set.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hwloc.h>

#include "posix-internal.h"

#define SLIT_LOCAL 10u
#define SLIT_REMOTE 20u
#define SLIT_MAX 255u
#define MAX_DISTANCES (MV_MAX_NODES * MV_MAX_NODES)
#define MV_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

enum desc_kind { DESC_REAL, DESC_XML, DESC_SYNTHETIC };

/* A description taken apart: what to hand hwloc, and the distances the caller gave. */
struct desc {
    enum desc_kind kind;
    const char *xml_path;      /* DESC_XML: points into the caller's string */
    char *synthetic;           /* DESC_SYNTHETIC: the part before ';' (owned) */
    hwloc_uint64_t *distances; /* DESC_SYNTHETIC with a suffix: the values (owned) */
    unsigned nr_distances;
};

/* ---- Parsing the description ----------------------------------------------------------- */

static const char *skip_spaces(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

static bool ends_with_xml(const char *s)
{
    size_t len = strlen(s);
    return len > 4 && strcasecmp(s + len - 4, ".xml") == 0;
}

/*
 * The suffix after ';': "distances=" and a comma-separated list of 1 to 4096 integers,
 * each 10..255, spaces allowed around every token. Whether the count and the diagonal fit
 * the topology is checked once the node count is known.
 */
static int parse_distances(const char *s, struct desc *d)
{
    static const char key[] = "distances";

    s = skip_spaces(s);
    if (strncmp(s, key, sizeof(key) - 1) != 0)
        return MV_EINVAL;
    s = skip_spaces(s + sizeof(key) - 1);
    if (*s++ != '=')
        return MV_EINVAL;
    d->distances = calloc(MAX_DISTANCES, sizeof(*d->distances));
    if (!d->distances)
        return MV_ENOMEM;
    for (;;) {
        unsigned v = 0;
        s = skip_spaces(s);
        if (*s < '0' || *s > '9')
            return MV_EINVAL;
        for (; *s >= '0' && *s <= '9'; s++) {
            v = v * 10u + (unsigned)(*s - '0');
            if (v > SLIT_MAX)
                return MV_EINVAL;
        }
        if (v < SLIT_LOCAL || d->nr_distances == MAX_DISTANCES)
            return MV_EINVAL;
        d->distances[d->nr_distances++] = v;
        s = skip_spaces(s);
        if (*s == '\0')
            return 0;
        if (*s++ != ',')
            return MV_EINVAL;
    }
}

static int parse_desc(const char *desc, struct desc *d)
{
    memset(d, 0, sizeof(*d));
    if (!desc || !*desc || strcmp(desc, "real") == 0) {
        d->kind = DESC_REAL;
        return 0;
    }
    if (strncmp(desc, "xml:", 4) == 0 || ends_with_xml(desc)) {
        d->kind = DESC_XML;
        d->xml_path = strncmp(desc, "xml:", 4) == 0 ? desc + 4 : desc;
        return *d->xml_path ? 0 : MV_EINVAL;
    }
    d->kind = DESC_SYNTHETIC;
    const char *semi = strchr(desc, ';');
    size_t len = semi ? (size_t)(semi - desc) : strlen(desc);
    d->synthetic = malloc(len + 1);
    if (!d->synthetic)
        return MV_ENOMEM;
    memcpy(d->synthetic, desc, len);
    d->synthetic[len] = '\0';
    return semi ? parse_distances(semi + 1, d) : 0;
}

static void desc_fini(struct desc *d)
{
    free(d->synthetic);
    free(d->distances);
}

/* ---- Distances --------------------------------------------------------------------------- */

/* ACPI SLIT shape: 10 on the diagonal, 10..255 elsewhere. */
static bool slit_ok(const hwloc_uint64_t *v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        for (unsigned j = 0; j < n; j++) {
            hwloc_uint64_t x = v[i * n + j];
            if (i == j ? x != SLIT_LOCAL : (x < SLIT_LOCAL || x > SLIT_MAX))
                return false;
        }
    return true;
}

/* Add the caller's matrix to the hwloc topology, as the OS would have given it. */
static int add_distances(hwloc_topology_t topo, const struct desc *d, unsigned n)
{
    if (d->nr_distances != n * n || !slit_ok(d->distances, n))
        return MV_EINVAL;
    if (n < 2)
        return 0; /* hwloc keeps no 1x1 matrix; the default diagonal is the same */

    hwloc_obj_t objs[MV_MAX_NODES];
    for (unsigned i = 0; i < n; i++)
        objs[i] = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, i);
    hwloc_distances_add_handle_t h = hwloc_distances_add_create(
        topo, "NUMALatency", HWLOC_DISTANCES_KIND_FROM_USER | HWLOC_DISTANCES_KIND_MEANS_LATENCY,
        0);
    if (!h)
        return MV_ENOMEM;
    /* Both calls destroy the handle themselves when they fail. */
    if (hwloc_distances_add_values(topo, h, n, objs, d->distances, 0) != 0 ||
        hwloc_distances_add_commit(topo, h, 0) != 0)
        return errno == ENOMEM ? MV_ENOMEM : MV_EINVAL;
    return 0;
}

/* Copy one hwloc matrix into out if it covers every node and has the SLIT shape. */
static bool take_matrix(hwloc_topology_t topo, struct hwloc_distances_s *m,
                        struct mv_topology *out)
{
    unsigned n = out->nr_nodes;
    unsigned idx[MV_MAX_NODES];

    for (unsigned i = 0; i < n; i++) {
        hwloc_obj_t o = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, i);
        int k = hwloc_distances_obj_index(m, o);
        if (k < 0)
            return false;
        idx[i] = (unsigned)k;
    }
    for (unsigned i = 0; i < n; i++)
        for (unsigned j = 0; j < n; j++) {
            hwloc_uint64_t x = m->values[idx[i] * m->nbobjs + idx[j]];
            if (i == j ? x != SLIT_LOCAL : (x < SLIT_LOCAL || x > SLIT_MAX))
                return false;
        }
    for (unsigned i = 0; i < n; i++)
        for (unsigned j = 0; j < n; j++)
            out->distance[i][j] = (uint8_t)m->values[idx[i] * m->nbobjs + idx[j]];
    return true;
}

/* Defaults first (10 local, 20 remote), then the first usable latency matrix, if any. */
static void read_distances(hwloc_topology_t topo, struct mv_topology *out)
{
    struct hwloc_distances_s *m[8];
    unsigned nr = MV_ARRAY_LEN(m);

    for (unsigned i = 0; i < out->nr_nodes; i++)
        for (unsigned j = 0; j < out->nr_nodes; j++)
            out->distance[i][j] = (uint8_t)(i == j ? SLIT_LOCAL : SLIT_REMOTE);
    if (out->nr_nodes < 2)
        return;
    if (hwloc_distances_get_by_type(topo, HWLOC_OBJ_NUMANODE, &nr, m,
                                    HWLOC_DISTANCES_KIND_FROM_OS |
                                        HWLOC_DISTANCES_KIND_FROM_USER |
                                        HWLOC_DISTANCES_KIND_MEANS_LATENCY,
                                    0) != 0)
        return;
    if (nr > MV_ARRAY_LEN(m))
        nr = MV_ARRAY_LEN(m);
    bool taken = false;
    for (unsigned k = 0; k < nr; k++) {
        if (!taken)
            taken = take_matrix(topo, m[k], out);
        hwloc_distances_release(topo, m[k]);
    }
}

/* ---- Reading a topology ------------------------------------------------------------------ */

static int load_hwloc(hwloc_topology_t topo, const struct desc *d)
{
    if (d->kind == DESC_XML && hwloc_topology_set_xml(topo, d->xml_path) != 0)
        return MV_EINVAL;
    if (d->kind == DESC_SYNTHETIC && hwloc_topology_set_synthetic(topo, d->synthetic) != 0)
        return MV_EINVAL;
    if (hwloc_topology_load(topo) != 0)
        return d->kind == DESC_REAL ? MV_EIO : MV_EINVAL;
    return 0;
}

static int fill_nodes(hwloc_topology_t topo, const struct desc *d, struct mv_topology *out)
{
    int nodes = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
    int pus = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
    if (nodes < 1 || nodes > (int)MV_MAX_NODES)
        return MV_EINVAL;
    bool real = d->kind == DESC_REAL && hwloc_topology_is_thissystem(topo);

    out->nr_nodes = (uint32_t)nodes;
    out->nr_cpus = pus > 0 ? (uint32_t)pus : 0;
    for (int i = 0; i < nodes; i++) {
        hwloc_obj_t o = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, (unsigned)i);
        int w = o->cpuset ? hwloc_bitmap_weight(o->cpuset) : 0;
        out->node[i].nr_cpus = w > 0 ? (uint32_t)w : 0;
        out->node[i].os_index = real ? o->os_index : UINT32_MAX;
    }
    return 0;
}

int mv__posix_topology_read(const char *desc, struct mv_topology *out)
{
    struct desc d;
    hwloc_topology_t topo;

    memset(out, 0, sizeof(*out));
    int rc = parse_desc(desc, &d);
    if (rc)
        goto out_desc;
    if (hwloc_topology_init(&topo) != 0) {
        rc = MV_ENOMEM;
        goto out_desc;
    }
    rc = load_hwloc(topo, &d);
    if (!rc)
        rc = fill_nodes(topo, &d, out);
    if (!rc && d.distances)
        rc = add_distances(topo, &d, out->nr_nodes);
    if (!rc)
        read_distances(topo, out);
    hwloc_topology_destroy(topo);
out_desc:
    desc_fini(&d);
    if (rc)
        memset(out, 0, sizeof(*out));
    return rc;
}

/* ---- Memory split ------------------------------------------------------------------------ */

int mv__posix_topology_split(struct mv_topology *t, uint64_t mem_bytes)
{
    uint32_t n = t->nr_nodes;
    uint64_t total = mem_bytes >> MV_PAGE_SHIFT;
    uint64_t granules = mem_bytes >> MV__POSIX_GRANULE_SHIFT;

    if (n == 0 || n > MV_MAX_NODES)
        return MV_EINVAL;
    if (mem_bytes && granules < n)
        return MV_EINVAL;
    uint64_t each = granules / n * MV__POSIX_GRANULE_FRAMES;
    for (uint32_t i = 0; i < n; i++) {
        t->node[i].first_mfn = (uint64_t)i * each;
        t->node[i].nr_frames = i + 1 < n ? each : total - (uint64_t)(n - 1) * each;
    }
    return 0;
}

/*
 * The public reader. A NULL description is the real machine here: MEMVIRT_TOPOLOGY is
 * read only by mv_posix_platform_create, for a config that names no topology.
 * mem_bytes == 0 reads the machine without memory ranges (every nr_frames 0).
 */
MV_API int mv_posix_topology_load(const char *desc, uint64_t mem_bytes, struct mv_topology *out)
{
    if (!out)
        return MV_EINVAL;
    int rc = mv__posix_topology_read(desc, out);
    if (!rc)
        rc = mv__posix_topology_split(out, mem_bytes);
    if (rc)
        memset(out, 0, sizeof(*out));
    return rc;
}
