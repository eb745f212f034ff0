/*
 * tests/test_sim_hostile.c - bad images and bad arguments never crash the simulator:
 * missing, empty, short, misaligned and corrupt files (raw and zstd), a CR3 outside RAM,
 * widths out of range; memvirt-sim's exit statuses for them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "sim.h"

static mv_sim_t *s;
static char dir[] = "/tmp/mv-sim-hostile-XXXXXX";

static int setup(void **state)
{
    (void)state;
    struct mv_sim_config c = {.size = sizeof(c), .mem_bytes = 64 * TH_MiB};
    assert_int_equal(mv_sim_create(&c, &s), 0);
    assert_non_null(mkdtemp(dir));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    th_assert_audit_clean(mv_sim_host(s));
    mv_sim_destroy(s);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static const char *file(const char *name, const void *data, size_t len)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    return path;
}

static int import(const char *path, uint64_t cr3, unsigned bits)
{
    struct mv_sim_image_config c = {.size = sizeof(c), .path = path, .cr3 = cr3, .domid = 9,
                                    .paging = MV_PAGING_HAP, .phys_bits = bits};
    struct mv_sim_image *img = NULL;
    char err[256] = "";
    int rc = mv_sim_image_import(s, &c, &img, err, sizeof(err));
    if (rc) {
        assert_null(img);
        assert_true(err[0] != 0);
        assert_null(mv_domain_lookup(mv_sim_host(s), 9)); /* nothing left behind */
    } else {
        mv_sim_image_free(s, img);
    }
    return rc;
}

/* A zstd frame that says 8 KiB and holds them (made by hand: raw blocks). */
static size_t zstd_frame(uint8_t *out, const uint8_t *content, size_t len, size_t declared)
{
    size_t n = 0;
    out[n++] = 0x28; out[n++] = 0xb5; out[n++] = 0x2f; out[n++] = 0xfd;
    out[n++] = 0xa0; /* FCS 4 bytes, single segment */
    for (int i = 0; i < 4; i++)
        out[n++] = (uint8_t)(declared >> (8 * i));
    /* one raw last block */
    uint32_t bh = 1u | (0u << 1) | ((uint32_t)len << 3);
    out[n++] = (uint8_t)bh; out[n++] = (uint8_t)(bh >> 8); out[n++] = (uint8_t)(bh >> 16);
    memcpy(out + n, content, len);
    return n + len;
}

static void test_bad_images(void **state)
{
    (void)state;
    static uint8_t page[3 * 4096];
    static uint8_t z[4 * 4096];
    memset(page, 0, sizeof(page));
    /* A root at gfn 1 with nothing mapped. */
    assert_int_equal(import(file("ok.raw", page, 8192), 0x1000, 0), 0);
    assert_int_equal(import(file("ok.raw", page, 8192), 0x1fff | (1ull << 63), 0), 0);
    assert_int_equal(import("/nonexistent/image", 0, 0), MV_EIO);
    assert_int_equal(import(dir, 0, 0), MV_EIO); /* a directory */
    assert_int_equal(import(file("empty.raw", page, 0), 0, 0), MV_EINVAL);
    assert_int_equal(import(file("short.raw", page, 4095), 0, 0), MV_EINVAL);
    assert_int_equal(import(file("odd.raw", page, 8193), 0, 0), MV_EINVAL);
    assert_int_equal(import(file("ok.raw", page, 8192), 0x2000, 0), MV_EINVAL); /* CR3 outside */
    assert_int_equal(import(file("ok.raw", page, 8192), ~0ull, 0), MV_EINVAL);
    assert_int_equal(import(file("ok.raw", page, 8192), 0, 31), MV_EINVAL);
    assert_int_equal(import(file("ok.raw", page, 8192), 0, 53), MV_EINVAL);
    struct mv_sim_image_config c = {.size = sizeof(c), .path = file("ok.raw", page, 8192),
                                    .paging = 7};
    struct mv_sim_image *img;
    char err[128];
    assert_int_equal(mv_sim_image_import(s, &c, &img, err, sizeof(err)), MV_EINVAL);
    assert_non_null(strstr(err, "shadow or hap"));
    /* zstd: good, then truncated, lying about its size, corrupt. */
    size_t n = zstd_frame(z, page, 8192, 8192);
    assert_int_equal(import(file("ok.zst", z, n), 0, 0), 0);
    assert_true(import(file("trunc.zst", z, n - 100), 0, 0) < 0);
    assert_int_equal(import(file("trunc2.zst", z, 7), 0, 0), MV_EIO);
    n = zstd_frame(z, page, 8192, 12288); /* says 12 KiB, holds 8 */
    assert_true(import(file("liar.zst", z, n), 0, 0) < 0);
    n = zstd_frame(z, page, 8192, 4096); /* says 4 KiB, holds 8 */
    assert_true(import(file("liar2.zst", z, n), 0, 0) < 0);
    n = zstd_frame(z, page, 8192, 8192);
    z[9] ^= 0xff; /* the block header */
    assert_true(import(file("corrupt.zst", z, n), 0, 0) < 0);
    /* Bigger than the host. */
    n = zstd_frame(z, page, 8192, 0x7ffff000u);
    assert_int_equal(import(file("huge.zst", z, n), 0, 0), MV_ENOMEM);
    /* Random garbage after the magic. */
    struct th_rng rng = {.s = 77};
    for (int i = 0; i < 50; i++) {
        for (size_t k = 4; k < sizeof(z); k++)
            z[k] = (uint8_t)th_rand(&rng);
        size_t len = 4 + th_rand_below(&rng, sizeof(z) - 4);
        (void)import(file("rnd.zst", z, len), 0, 0);
    }
}

/* A raw image with a real table: hostile entries everywhere must not crash the walk. */
static void test_hostile_tables(void **state)
{
    (void)state;
    enum { PAGES = 64 };
    static uint64_t img_mem[PAGES][512];
    struct th_rng rng = {.s = 99};
    for (int round = 0; round < 20; round++) {
        for (int p = 0; p < PAGES; p++)
            for (int k = 0; k < 512; k++)
                img_mem[p][k] = th_rand_below(&rng, 4) ? 0 : th_rand(&rng);
        /* Keep some structure: point entries at frames inside the image now and then. */
        for (int p = 0; p < PAGES; p++)
            for (int k = 0; k < 512; k += 17)
                img_mem[p][k] = (th_rand_below(&rng, 80) << 12) | (th_rand(&rng) & 0x80000000000001ffull);
        const char *path = file("tables.raw", img_mem, sizeof(img_mem));
        struct mv_sim_image_config c = {.size = sizeof(c), .path = path,
                                        .cr3 = th_rand_below(&rng, PAGES) << 12, .domid = 9,
                                        .paging = MV_PAGING_HAP, .gbpages = round & 1};
        struct mv_sim_image *img = NULL;
        char err[256];
        assert_int_equal(mv_sim_image_import(s, &c, &img, err, sizeof(err)), 0);
        uint64_t verified, mismatches;
        assert_int_equal(mv_sim_image_verify(s, img, NULL, NULL, &verified, &mismatches), 0);
        assert_int_equal(verified, img->st.pages4k);
        assert_int_equal(mismatches, 0);
        th_assert_audit_clean(mv_sim_host(s));
        mv_sim_image_free(s, img);
    }
}

static int run_tool(const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s %s >/dev/null 2>&1", MEMVIRT_SIM, args);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_tool_exit_status(void **state)
{
    (void)state;
    static uint8_t page[8192];
    memset(page, 0, sizeof(page));
    char a[512];
    const char *ok = file("tool.raw", page, sizeof(page));
    char okpath[256];
    snprintf(okpath, sizeof(okpath), "%s", ok);
    assert_int_equal(run_tool("--help"), 0);
    assert_int_equal(run_tool("--version"), 0);
    assert_int_equal(run_tool(""), 2);
    assert_int_equal(run_tool("--bogus"), 2);
    assert_int_equal(run_tool("--cr3 1000"), 2);
    snprintf(a, sizeof(a), "--image %s", okpath);
    assert_int_equal(run_tool(a), 2); /* no --cr3 */
    snprintf(a, sizeof(a), "--image %s --cr3 zz", okpath);
    assert_int_equal(run_tool(a), 2);
    snprintf(a, sizeof(a), "--image %s --cr3 1000 --format xml", okpath);
    assert_int_equal(run_tool(a), 2);
    snprintf(a, sizeof(a), "--image %s --cr3 1000 --paging ept", okpath);
    assert_int_equal(run_tool(a), 2);
    snprintf(a, sizeof(a), "--image %s --cr3 1000 --paging hap --verify", okpath);
    assert_int_equal(run_tool(a), 0);
    assert_int_equal(run_tool("--workload idle --paging hap"), 2); /* needs --mode hvm */
    assert_int_equal(run_tool("--workload idle --mode hvm --paging shadow --steps 50"), 0);
    snprintf(a, sizeof(a), "--image %s --cr3 1000 --maxphyaddr 99", okpath);
    assert_int_equal(run_tool(a), 2);
    snprintf(a, sizeof(a), "--image %s --cr3 1000 --host-memory 12Q", okpath);
    assert_int_equal(run_tool(a), 2);
    snprintf(a, sizeof(a), "--image %s --cr3 9000", okpath);
    assert_int_equal(run_tool(a), 2); /* CR3 outside */
    assert_int_equal(run_tool("--image /nonexistent --cr3 0"), 2);
    snprintf(a, sizeof(a), "--image %s --cr3 1000 --verify --format json -o %s/out.json", okpath,
             dir);
    assert_int_equal(run_tool(a), 0);
    /* Shadow paging is the default, and the report says so. */
    char jpath[512], buf[4096];
    snprintf(jpath, sizeof(jpath), "%s/out.json", dir);
    FILE *jf = fopen(jpath, "r");
    assert_non_null(jf);
    size_t jn = fread(buf, 1, sizeof(buf) - 1, jf);
    fclose(jf);
    buf[jn] = 0;
    assert_non_null(strstr(buf, "\"paging\": \"shadow\""));
    assert_non_null(strstr(buf, "\"mismatches\": 0"));
    snprintf(a, sizeof(a), "--image %s --cr3 1000 --format csv -o /nonexistent/dir/x", okpath);
    assert_int_equal(run_tool(a), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_images),
        cmocka_unit_test(test_hostile_tables),
        cmocka_unit_test(test_tool_exit_status),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
