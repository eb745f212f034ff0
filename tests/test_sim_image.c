/*
 * tests/test_sim_image.c - the real Linux guest image of shared/corpus.
 *
 * Imported once per process in each HVM paging mode (decompressed as a stream): the
 * README's figures, every MAP line of the guest's own listing translating with its
 * process's root, and --verify under shadow paging (the default) and under HAP with zero
 * mismatches and a clean audit, log-dirty included. The corpus is looked for in
 * MEMVIRT_CORPUS, then beside the clone (MV_TEST_CORPUS); without it the suite exits 77.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "sim.h"

static mv_sim_t *s;
static struct mv_sim_image *img, *img_hap; /* shadow (the default), HAP */
static char corpus[512];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int group_setup(void **state)
{
    (void)state;
    char path[600], err[512];
    snprintf(path, sizeof(path), "%s/guest-A.mem.zst", corpus);
    uint64_t cr3 = 0;
    char cpath[600];
    snprintf(cpath, sizeof(cpath), "%s/guest-A.cr3", corpus);
    FILE *f = fopen(cpath, "r");
    if (!f || fscanf(f, "%lli", (long long *)&cr3) != 1) {
        fprintf(stderr, "cannot read %s\n", cpath);
        return -1;
    }
    fclose(f);
    struct mv_sim_config c = {.size = sizeof(c), .mem_bytes = 640 * TH_MiB};
    if (mv_sim_create(&c, &s))
        return -1;
    struct mv_sim_image_config ic = {.size = sizeof(ic), .path = path, .cr3 = cr3, .domid = 1};
    double t0 = now_s();
    if (mv_sim_image_import(s, &ic, &img, err, sizeof(err))) {
        fprintf(stderr, "import: %s\n", err);
        return -1;
    }
    print_message("import: %.2f s\n", now_s() - t0);
    ic.domid = 2;
    ic.paging = MV_PAGING_HAP;
    if (mv_sim_image_import(s, &ic, &img_hap, err, sizeof(err))) {
        fprintf(stderr, "import (hap): %s\n", err);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (s) {
        th_assert_audit_clean(mv_sim_host(s));
        mv_sim_image_free(s, img);
        mv_sim_image_free(s, img_hap);
        th_assert_audit_clean(mv_sim_host(s));
        mv_sim_destroy(s);
    }
    return 0;
}

static void test_figures(void **state)
{
    (void)state;
    struct mv_domain_stats ds = {.size = sizeof(ds)};
    assert_int_equal(mv_domain_stats(img->d, &ds), 0);
    assert_int_equal(ds.paging, MV_PAGING_SHADOW);
    assert_memory_equal(&img->st, &img_hap->st, sizeof(img->st));
    const struct mv_sim_image_stats *st = &img->st;
    assert_int_equal(st->bytes, 256 * TH_MiB);
    assert_int_equal(img->cr3, 0x2946000);
    assert_int_equal(st->roots, 12);
    assert_int_equal(st->tables[3], 12);
    assert_int_equal(st->tables[2], 89);
    assert_int_equal(st->tables[1], 35);
    assert_int_equal(st->tables[0], 98);
    assert_int_equal(st->leaves[0], 26732);
    assert_int_equal(st->leaves[1], 147);
    assert_int_equal(st->leaves[2], 0);
    assert_int_equal(st->pages4k, 1037651);
    /* The roots the README names are among them. */
    static const mv_gfn_t named[] = {0x2946, 0x27d6, 0x29e6, 0x1070, 0x1072, 0x28fc, 0x294c,
                                     0x294e, 0x29e8, 0x9c, 0x1056, 0x6610};
    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
        bool found = false;
        for (uint64_t k = 0; k < img->nr_roots; k++)
            found |= img->roots[k] == named[i];
        assert_true(found);
    }
    /* The vCPU's control state: a 64-bit Linux guest. */
    struct mv_vcpu_state vs = {.size = sizeof(vs)};
    assert_int_equal(mv_vcpu_get_state(mv_domain_vcpu(img->d, 0), &vs), 0);
    assert_int_equal(vs.cr3, 0x2946000);
    assert_true((vs.cr0 & (MV_CR0_PG | MV_CR0_WP)) == (MV_CR0_PG | MV_CR0_WP));
    assert_true((vs.cr4 & (MV_CR4_PAE | MV_CR4_PGE)) == (MV_CR4_PAE | MV_CR4_PGE));
    assert_true(vs.efer & MV_EFER_NXE);
    assert_int_equal(vs.flags & MV_VCPUF_GBPAGES, 0);
}

static void test_maps(void **state)
{
    (void)state;
    char path[600], err[256];
    snprintf(path, sizeof(path), "%s/guest-A.maps", corpus);
    uint64_t ok, total;
    assert_int_equal(mv_sim_image_check_maps(img, path, &ok, &total, err, sizeof(err)), 0);
    assert_int_equal(total, 22887);
    assert_int_equal(ok, 22887);
}

static void verify(struct mv_sim_image *im, const char *mode)
{
    uint64_t verified, mismatches;
    double t0 = now_s();
    assert_int_equal(mv_sim_image_verify(s, im, NULL, NULL, &verified, &mismatches), 0);
    double t = now_s() - t0;
    print_message("verify (%s): %llu pages in %.2f s (%.1f M translations/s)\n", mode,
                  (unsigned long long)verified, t, 6.0 * (double)verified / t / 1e6);
    assert_int_equal(verified, im->st.pages4k);
    assert_int_equal(mismatches, 0);
    struct mv_sim_tlb_report rep;
    assert_int_equal(mv_sim_tlb_check(mv_sim_vcpu(s, im->d, 0), &rep), 0);
    th_assert_audit_clean(mv_sim_host(s));
    /* The figures do not move: A/D bits are not counted. */
    assert_int_equal(im->st.pages4k, 1037651);
}

static void test_verify_shadow(void **state)
{
    (void)state;
    verify(img, "shadow");
    struct mv_shadow_stats ss = {.size = sizeof(ss)};
    assert_int_equal(mv_shadow_stats(img->d, &ss), 0);
    print_message("shadow: %llu fixed, %llu emulated writes, %llu evictions, L4 %llu L3 %llu "
                  "L2 %llu L1 %llu FL1 %llu in use\n",
                  (unsigned long long)ss.faults[MV_SHADOW_FIXED],
                  (unsigned long long)ss.emulated_writes, (unsigned long long)ss.evictions,
                  (unsigned long long)ss.shadows[4], (unsigned long long)ss.shadows[3],
                  (unsigned long long)ss.shadows[2], (unsigned long long)ss.shadows[1],
                  (unsigned long long)ss.shadows[5]);
    /* Leaves were built on faults (the kernel half once for every root: its shadows are
     * shared), and writes to the guest's own tables were emulated. */
    assert_true(ss.faults[MV_SHADOW_FIXED] > img->st.leaves[0]);
    assert_true(ss.emulated_writes > 0);
    uint64_t in_use = 0;
    for (unsigned t = 1; t < 7; t++)
        in_use += ss.shadows[t];
    assert_true(in_use <= ss.budget && ss.pool_frames <= ss.budget);
}

static void test_verify_hap(void **state)
{
    (void)state;
    verify(img_hap, "hap");
}

struct walkctx {
    const struct mv_sim_image *im;
    mv_sim_vcpu_t *sv;
    const uint64_t *bm;
    uint64_t writable, missed;
};

static void enumerate(struct walkctx *w, int level, mv_gfn_t table, uint64_t base)
{
    const uint64_t *t = (const uint64_t *)(const void *)w->im->va[table];
    for (unsigned i = 0; i < 512; i++) {
        uint64_t e = t[i];
        if (!(e & 1))
            continue;
        uint64_t va = base + ((uint64_t)i << (12 + 9 * (level - 1)));
        mv_gfn_t g = (e & 0x000ffffffffff000ull) >> 12;
        if (level == 1 || (level < 4 && (e & 0x80))) {
            if (level != 1 || g >= w->im->pages)
                continue; /* 4 KiB leaves are enough here */
            uint64_t cva = (uint64_t)((int64_t)(va << 16) >> 16);
            struct mv_sim_result o;
            uint32_t flags = (va >> 47) ? 0 : MV_SIM_USER;
            if (mv_sim_oracle(w->sv, cva, MV_SIM_WRITE, flags, &o) == MV_SIM_OK) {
                w->writable++;
                mv_gfn_t d = o.addr >> 12;
                if (!((w->bm[d / 64] >> (d % 64)) & 1))
                    w->missed++;
            }
        } else if (g < w->im->pages) {
            enumerate(w, level - 1, g, va);
        }
    }
}

/* Under log-dirty, verification writes every page: all of them are reported. */
static void verify_logdirty(struct mv_sim_image *im)
{
    assert_int_equal(mv_p2m_logdirty_enable(im->d), 0);
    uint64_t done, dirty, verified, mismatches;
    uint64_t *bm = calloc(im->pages / 64, sizeof(uint64_t));
    assert_non_null(bm);
    assert_int_equal(mv_p2m_logdirty_peek_and_clean(im->d, 0, im->pages, bm, im->pages,
                                                    &done, &dirty), 0);
    assert_int_equal(mv_sim_image_verify(s, im, NULL, NULL, &verified, &mismatches), 0);
    assert_int_equal(mismatches, 0);
    uint64_t rc;
    while ((rc = (uint64_t)mv_p2m_logdirty_peek_and_clean(im->d, 0, im->pages, bm,
                                                          im->pages, &done, &dirty)) ==
           (uint64_t)MV_EAGAIN)
        ;
    assert_int_equal(rc, 0);
    /* Every page the CR3 root maps writable was written: it must be reported. */
    struct walkctx w = {.im = im, .sv = mv_sim_vcpu(s, im->d, 0), .bm = bm};
    enumerate(&w, 4, im->cr3 >> 12, 0);
    uint64_t writable = w.writable, missed = w.missed;
    mv_sim_vcpu_t *sv = w.sv;
    assert_int_equal(mv_sim_set_cr3(sv, im->cr3), 0);
    assert_true(writable > 0);
    assert_int_equal(missed, 0);
    free(bm);
    assert_int_equal(mv_p2m_logdirty_disable(im->d), 0);
}

static void test_verify_logdirty_shadow(void **state)
{
    (void)state;
    verify_logdirty(img);
}

static void test_verify_logdirty_hap(void **state)
{
    (void)state;
    verify_logdirty(img_hap);
}

int main(void)
{
    const char *env = getenv("MEMVIRT_CORPUS");
    snprintf(corpus, sizeof(corpus), "%s", env && *env ? env : MV_TEST_CORPUS);
    char probe[600];
    snprintf(probe, sizeof(probe), "%s/guest-A.mem.zst", corpus);
    if (access(probe, R_OK) != 0) {
        fprintf(stderr, "test_sim_image: skipped: no corpus image at %s (set MEMVIRT_CORPUS)\n",
                probe);
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_figures),
        cmocka_unit_test(test_maps),
        cmocka_unit_test(test_verify_shadow),
        cmocka_unit_test(test_verify_hap),
        cmocka_unit_test(test_verify_logdirty_shadow),
        cmocka_unit_test(test_verify_logdirty_hap),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
