/*
 * tests/test_topology.c - topology descriptions (mm/posix_topology.c): the real machine,
 * synthetic strings with and without distances, XML files, the memory split, and every
 * kind of description that must be refused (with *out left zeroed and nothing leaked).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <hwloc.h>

#include <memvirt/memvirt.h>

#define MiB (1ull << 20)
#define FRAMES_PER_MIB (MiB / MV_PAGE_SIZE)

static struct mv_topology topo; /* 6.7 KiB: kept off the stack */

static bool all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

/* Ranges contiguous from 0 in node order, bases NULL, SLIT diagonal. */
static void check_shape(const struct mv_topology *t, uint64_t mem_bytes)
{
    uint64_t next = 0;
    assert_true(t->nr_nodes >= 1 && t->nr_nodes <= MV_MAX_NODES);
    for (uint32_t i = 0; i < t->nr_nodes; i++) {
        assert_int_equal(t->node[i].first_mfn, next);
        assert_null(t->node[i].base);
        assert_int_equal(t->distance[i][i], 10);
        for (uint32_t j = 0; j < t->nr_nodes; j++)
            assert_true(t->distance[i][j] >= 10);
        next += t->node[i].nr_frames;
    }
    assert_int_equal(next, mem_bytes / MV_PAGE_SIZE);
}

static void test_real_machine(void **state)
{
    (void)state;
    assert_int_equal(mv_posix_topology_load(NULL, 64 * MiB, &topo), 0);
    check_shape(&topo, 64 * MiB);
    uint32_t nodes = topo.nr_nodes;
    assert_true(topo.nr_cpus >= 1);
    for (uint32_t i = 0; i < nodes; i++)
        assert_int_not_equal(topo.node[i].os_index, UINT32_MAX); /* real nodes can be bound */

    assert_int_equal(mv_posix_topology_load("", 0, &topo), 0);
    assert_int_equal(topo.nr_nodes, nodes);
    assert_int_equal(topo.node[0].nr_frames, 0); /* no memory asked for: empty ranges */
    assert_int_equal(mv_posix_topology_load("real", 0, &topo), 0);
    assert_int_equal(topo.nr_nodes, nodes);
}

static void test_synthetic_default_distances(void **state)
{
    (void)state;
    assert_int_equal(mv_posix_topology_load("pack:2 numa:1 core:4 pu:1", 64 * MiB, &topo), 0);
    check_shape(&topo, 64 * MiB);
    assert_int_equal(topo.nr_nodes, 2);
    assert_int_equal(topo.nr_cpus, 8);
    for (uint32_t i = 0; i < 2; i++) {
        assert_int_equal(topo.node[i].nr_cpus, 4);
        assert_int_equal(topo.node[i].os_index, UINT32_MAX); /* never bound */
        for (uint32_t j = 0; j < 2; j++)
            assert_int_equal(topo.distance[i][j], i == j ? 10 : 20);
    }
    /* Without a numa level hwloc gives one node holding every CPU. */
    assert_int_equal(mv_posix_topology_load("pack:2 core:4 pu:1", 0, &topo), 0);
    assert_int_equal(topo.nr_nodes, 1);
    assert_int_equal(topo.node[0].nr_cpus, 8);
}

static void test_synthetic_given_distances(void **state)
{
    (void)state;
    static const uint8_t want[4][4] = {
        {10, 21, 31, 41}, {22, 10, 21, 31}, {31, 21, 10, 21}, {41, 31, 21, 10}};
    assert_int_equal(mv_posix_topology_load("numa:4 core:2 pu:1; distances=10,21,31,41,"
                                            "22,10,21,31,31,21,10,21,41,31,21,10",
                                            32 * MiB, &topo),
                     0);
    check_shape(&topo, 32 * MiB);
    assert_int_equal(topo.nr_nodes, 4);
    for (uint32_t i = 0; i < 4; i++) {
        assert_int_equal(topo.node[i].nr_cpus, 2);
        for (uint32_t j = 0; j < 4; j++)
            assert_int_equal(topo.distance[i][j], want[i][j]);
    }
    /* Spaces around every token; 255 is the largest distance. */
    assert_int_equal(mv_posix_topology_load("numa:2 pu:1 ;  distances = 10 , 255,\t12, 10 ",
                                            0, &topo),
                     0);
    assert_int_equal(topo.distance[0][1], 255);
    assert_int_equal(topo.distance[1][0], 12);
    /* One node: the only valid matrix is {10}. */
    assert_int_equal(mv_posix_topology_load("core:2 pu:1; distances=10", 0, &topo), 0);
    assert_int_equal(topo.nr_nodes, 1);
    assert_int_equal(topo.distance[0][0], 10);
}

static void test_memory_split(void **state)
{
    (void)state;
    /* Even: 64 MiB over 2 nodes. */
    assert_int_equal(mv_posix_topology_load("numa:2 pu:1", 64 * MiB, &topo), 0);
    assert_int_equal(topo.node[0].first_mfn, 0);
    assert_int_equal(topo.node[0].nr_frames, 8192);
    assert_int_equal(topo.node[1].first_mfn, 8192);
    assert_int_equal(topo.node[1].nr_frames, 8192);

    /* 10 MiB = 5 granules over 3 nodes: 1, 1 and the remaining 3. */
    assert_int_equal(mv_posix_topology_load("numa:3 pu:1", 10 * MiB, &topo), 0);
    check_shape(&topo, 10 * MiB);
    assert_int_equal(topo.node[0].nr_frames, 2 * FRAMES_PER_MIB);
    assert_int_equal(topo.node[1].first_mfn, 2 * FRAMES_PER_MIB);
    assert_int_equal(topo.node[1].nr_frames, 2 * FRAMES_PER_MIB);
    assert_int_equal(topo.node[2].first_mfn, 4 * FRAMES_PER_MIB);
    assert_int_equal(topo.node[2].nr_frames, 6 * FRAMES_PER_MIB);

    /* Bytes past the last granule go to the last node, rounded down to whole frames. */
    uint64_t odd = 6 * MiB + 3 * MV_PAGE_SIZE + 100;
    assert_int_equal(mv_posix_topology_load("numa:2 pu:1", odd, &topo), 0);
    assert_int_equal(topo.node[0].nr_frames, 512);
    assert_int_equal(topo.node[1].first_mfn, 512);
    assert_int_equal(topo.node[1].nr_frames, 1024 + 3);

    /* Exactly one granule per node is enough; 64 nodes is the most there can be. */
    assert_int_equal(mv_posix_topology_load("numa:64 pu:1", 128 * MiB, &topo), 0);
    assert_int_equal(topo.nr_nodes, 64);
    check_shape(&topo, 128 * MiB);
    assert_int_equal(topo.node[63].first_mfn, 63 * 512);
}

/* Refused: MV_EINVAL and a zeroed *out, whatever was there before. */
static void expect_refused(const char *desc, uint64_t mem_bytes)
{
    memset(&topo, 0xa5, sizeof(topo));
    int rc = mv_posix_topology_load(desc, mem_bytes, &topo);
    if (rc != MV_EINVAL)
        fail_msg("\"%s\" (%llu bytes): got %s", desc, (unsigned long long)mem_bytes,
                 mv_strerror_name(rc));
    assert_true(all_zero(&topo, sizeof(topo)));
}

static void test_bad_descriptions(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "garbage 12",
        "pack:2 numa:1 core:4 pu:x",
        "numa:65 pu:1",                                  /* more than MV_MAX_NODES */
        "numa:2 pu:1; distances=10,20,20",               /* wrong count */
        "numa:2 pu:1; distances=10,20,20,10,20",         /* wrong count */
        "numa:2 pu:1; distances=10,0,0,10",              /* below 10 */
        "numa:2 pu:1; distances=10,9,9,10",              /* below 10 */
        "numa:2 pu:1; distances=10,256,20,10",           /* above 255 */
        "numa:2 pu:1; distances=10,99999999999999999999,20,10",
        "numa:2 pu:1; distances=11,20,20,10",            /* diagonal must be 10 */
        "numa:2 pu:1; distances=",                       /* empty list */
        "numa:2 pu:1; distances=10,,20,10",
        "numa:2 pu:1; distances=10,20,20,10,",
        "numa:2 pu:1; distances=10 20 20 10",
        "numa:2 pu:1; distances=-10,20,20,10",
        "numa:2 pu:1; distance=10,20,20,10",             /* unknown key */
        "numa:2 pu:1;",
        "core:2 pu:1; distances=20",                     /* 1x1 must be {10} */
        "xml:",
        "xml:/nonexistent/memvirt-topology.xml",
        "/nonexistent/memvirt-topology.xml",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_refused(bad[i], 64 * MiB);

    /* Fewer 2 MiB granules than nodes. */
    expect_refused("numa:2 pu:1", 2 * MiB);
    expect_refused("numa:4 pu:1", 7 * MiB);
    expect_refused("numa:2 pu:1", 4 * MiB - 1);
    assert_int_equal(mv_posix_topology_load("numa:2 pu:1", 64 * MiB, NULL), MV_EINVAL);
}

/* A temporary file name, with or without a .xml suffix; the file is removed by the test. */
static void temp_path(char *buf, size_t len, const char *suffix)
{
    const char *dir = getenv("TMPDIR");
    snprintf(buf, len, "%s/memvirt-topo-XXXXXX%s", dir && *dir ? dir : "/tmp", suffix);
    int fd = mkstemps(buf, (int)strlen(suffix));
    assert_true(fd >= 0);
    close(fd);
}

/* Export a synthetic topology with a distance matrix, as another machine's file would be. */
static void export_xml(const char *path)
{
    hwloc_topology_t t;
    assert_int_equal(hwloc_topology_init(&t), 0);
    assert_int_equal(hwloc_topology_set_synthetic(t, "pack:2 numa:1 core:3 pu:1"), 0);
    assert_int_equal(hwloc_topology_load(t), 0);
    hwloc_obj_t objs[2] = {hwloc_get_obj_by_type(t, HWLOC_OBJ_NUMANODE, 0),
                           hwloc_get_obj_by_type(t, HWLOC_OBJ_NUMANODE, 1)};
    hwloc_uint64_t values[4] = {10, 17, 17, 10};
    hwloc_distances_add_handle_t h = hwloc_distances_add_create(
        t, "NUMALatency", HWLOC_DISTANCES_KIND_FROM_OS | HWLOC_DISTANCES_KIND_MEANS_LATENCY, 0);
    assert_non_null(h);
    assert_int_equal(hwloc_distances_add_values(t, h, 2, objs, values, 0), 0);
    assert_int_equal(hwloc_distances_add_commit(t, h, 0), 0);
    assert_int_equal(hwloc_topology_export_xml(t, path, 0), 0);
    hwloc_topology_destroy(t);
}

static void check_exported(void)
{
    assert_int_equal(topo.nr_nodes, 2);
    assert_int_equal(topo.nr_cpus, 6);
    for (uint32_t i = 0; i < 2; i++) {
        assert_int_equal(topo.node[i].nr_cpus, 3);
        assert_int_equal(topo.node[i].os_index, UINT32_MAX); /* a file: never bound */
    }
    assert_int_equal(topo.distance[0][1], 17);
    assert_int_equal(topo.distance[1][0], 17);
    check_shape(&topo, 16 * MiB);
}

static void test_xml_round_trip(void **state)
{
    (void)state;
    char plain[512], suffixed[512], desc[600];

    temp_path(plain, sizeof(plain), "");
    temp_path(suffixed, sizeof(suffixed), ".xml");
    export_xml(plain);
    export_xml(suffixed);

    snprintf(desc, sizeof(desc), "xml:%s", plain);
    assert_int_equal(mv_posix_topology_load(desc, 16 * MiB, &topo), 0);
    check_exported();
    assert_int_equal(mv_posix_topology_load(suffixed, 16 * MiB, &topo), 0);
    check_exported();
    snprintf(desc, sizeof(desc), "xml:%s", suffixed);
    assert_int_equal(mv_posix_topology_load(desc, 16 * MiB, &topo), 0);
    check_exported();
    /* Without the prefix or the suffix the path reads as a synthetic string. */
    expect_refused(plain, 16 * MiB);

    /* A file that is not an hwloc export. */
    FILE *f = fopen(suffixed, "w");
    assert_non_null(f);
    fputs("<?xml version=\"1.0\"?>\n<nothing/>\n", f);
    fclose(f);
    expect_refused(suffixed, 16 * MiB);

    unlink(plain);
    unlink(suffixed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_machine),
        cmocka_unit_test(test_synthetic_default_distances),
        cmocka_unit_test(test_synthetic_given_distances),
        cmocka_unit_test(test_memory_split),
        cmocka_unit_test(test_bad_descriptions),
        cmocka_unit_test(test_xml_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
