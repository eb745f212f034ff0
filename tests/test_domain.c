/*
 * tests/test_domain.c - domain lifecycle, configuration refusals, vCPUs, domain frames,
 * preemptible destroy, and the ownership audit (I2, I3, I4, I16) broken on purpose.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "mm-internal.h"

#define MEM (64 * TH_MiB)
#define FRAMES (MEM >> MV_PAGE_SHIFT)

static struct mv_domain_config cfg_of(uint32_t domid, uint64_t max_pages)
{
    return (struct mv_domain_config){.size = sizeof(struct mv_domain_config),
                                     .domid = domid,
                                     .type = MV_DOMAIN_HVM,
                                     .paging = MV_PAGING_HAP,
                                     .nr_vcpus = 2,
                                     .max_pages = max_pages,
                                     .node_affinity = MV_NODE_ANY};
}

static mv_domain_t *make(mv_host_t *h, uint32_t domid, uint64_t max_pages)
{
    struct mv_domain_config c = cfg_of(domid, max_pages);
    mv_domain_t *d = NULL;
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    return d;
}

static void destroy_all_the_way(mv_domain_t *d, int *calls)
{
    int rc, n = 0;
    while ((rc = mv_domain_destroy(d)) == MV_EAGAIN)
        n++;
    assert_int_equal(rc, 0);
    if (calls)
        *calls = n;
}

static void test_config_refused(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(MEM, "pack:2 numa:1 core:1 pu:1", &tp);
    mv_domain_t *d = (mv_domain_t *)(uintptr_t)0x99, *keep = make(h, 3, 100);
    struct mv_domain_config c;
#define REFUSE(field, value, err)                          \
    do {                                                   \
        c = cfg_of(5, 100);                                \
        c.field = value;                                   \
        assert_int_equal(mv_domain_create(h, &c, &d), err); \
    } while (0)
    REFUSE(domid, 3, MV_EEXIST);
    REFUSE(domid, MV_DOMID_MAX + 1, MV_ERANGE);
    REFUSE(domid, UINT32_MAX, MV_ERANGE);
    REFUSE(nr_vcpus, 0, MV_EINVAL);
    REFUSE(nr_vcpus, MV_MAX_VCPUS + 1, MV_EINVAL);
    REFUSE(max_pages, FRAMES + 1, MV_ENOMEM);
    REFUSE(type, 7, MV_EINVAL);
    REFUSE(paging, MV_PAGING_PV, MV_EINVAL);   /* HVM needs HAP or shadow */
    c = cfg_of(5, 100); /* shadow paging is for HVM guests only */
    c.type = MV_DOMAIN_PV;
    c.paging = MV_PAGING_SHADOW;
    assert_int_equal(mv_domain_create(h, &c, &d), MV_EINVAL);
    REFUSE(node_affinity, 2, MV_ENODEV);
    REFUSE(flags, 0x80, MV_EINVAL);
    REFUSE(flags, MV_DOMF_LINEAR_PT, MV_EINVAL); /* a PV option */
    REFUSE(phys_bits, 20, MV_EINVAL);
    REFUSE(phys_bits, 60, MV_EINVAL);
    REFUSE(size, 8, MV_EINVAL);
    c = cfg_of(5, 100);
    c.type = MV_DOMAIN_PV;
    c.paging = MV_PAGING_HAP;
    assert_int_equal(mv_domain_create(h, &c, &d), MV_EINVAL);
    assert_ptr_equal(d, (mv_domain_t *)(uintptr_t)0x99);
    assert_null(mv_domain_lookup(h, 5));
    assert_ptr_equal(mv_domain_lookup(h, 3), keep);
    /* PV with linear page tables is fine. */
    c.paging = MV_PAGING_PV;
    c.flags = MV_DOMF_LINEAR_PT;
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    destroy_all_the_way(d, NULL);
    destroy_all_the_way(keep, NULL);
    th_host_destroy(h, tp);
}

static void test_lifecycle_returns_everything(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(MEM, "pack:2 numa:1 core:1 pu:1", &tp);
    struct mv_host_stats before = {.size = sizeof(before)}, after = {.size = sizeof(after)};
    assert_int_equal(mv_host_drain(h), 0);
    assert_int_equal(mv_host_stats(h, &before), 0);

    mv_domain_t *d = make(h, 7, FRAMES / 2);
    assert_int_equal(mv_domain_id(d), 7);
    assert_ptr_equal(mv_domain_host(d), h);
    struct th_rng rng = {.s = 42};
    uint64_t pages = 0;
    for (;;) {
        unsigned order = (unsigned)th_rand_below(&rng, 10);
        mv_mfn_t m;
        int rc = mv_domain_alloc_frames(d, order, MV_NODE_ANY, 0, &m);
        if (rc == MV_ENOSPC)
            break;
        assert_int_equal(rc, 0);
        memset(mv_frame_va(h, m), 0x3c, (size_t)MV_PAGE_SIZE << order);
        pages += 1ull << order;
    }
    struct mv_domain_stats ds = {.size = sizeof(ds)};
    assert_int_equal(mv_domain_stats(d, &ds), 0);
    assert_int_equal(ds.pages, pages);
    assert_true(ds.pages <= FRAMES / 2);
    assert_true(ds.pages > FRAMES / 2 - 512);
    assert_int_equal(ds.max_pages, FRAMES / 2);
    assert_int_equal(ds.nr_vcpus, 2);
    assert_true(ds.overhead_bytes > 0);
    assert_int_equal(ds.dying, 0);
    th_assert_audit_clean(h);

    destroy_all_the_way(d, NULL);
    assert_null(mv_domain_lookup(h, 7));
    th_assert_audit_clean(h);
    assert_int_equal(mv_host_drain(h), 0);
    assert_int_equal(mv_host_stats(h, &after), 0);
    assert_int_equal(after.free_frames, before.free_frames);
    assert_int_equal(after.committed_frames, before.committed_frames);
    assert_int_equal(after.overhead_bytes, before.overhead_bytes);
    assert_int_equal(after.nr_domains, 0);
    th_host_destroy(h, tp);
}

/* A big domain takes several destroy calls; each keeps its progress. */
static void test_destroy_preemptible(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(1 * TH_GiB, NULL, &tp);
    mv_domain_t *d = make(h, 1, 1u << 18);
    mv_mfn_t m;
    for (int i = 0; i < 256; i++)
        assert_int_equal(mv_domain_alloc_frames(d, 9, MV_NODE_ANY, 0, &m), 0);
    int calls;
    destroy_all_the_way(d, &calls);
    assert_true(calls >= 3); /* 262144 frames, scanned 65536 per call */
    th_host_destroy(h, tp);
}

/* Dying: nothing new, every operation refused, outside references keep frames. */
static void test_dying_domain(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(MEM, NULL, &tp);
    mv_domain_t *d = make(h, 2, 1000);
    mv_mfn_t a, b;
    assert_int_equal(mv_domain_alloc_frames(d, 0, MV_NODE_ANY, 0, &a), 0);
    assert_int_equal(mv_domain_alloc_frames(d, 0, MV_NODE_ANY, 0, &b), 0);
    assert_int_equal(mv_page_get(d, a), 0); /* an outside hold */
    assert_int_equal(mv_domain_destroy(d), MV_EBUSY);
    /* Dying now. */
    struct mv_domain_stats ds = {.size = sizeof(ds)};
    assert_int_equal(mv_domain_stats(d, &ds), 0);
    assert_int_equal(ds.dying, 1);
    assert_int_equal(ds.pages, 1); /* b went back, a is held */
    mv_mfn_t m = 5;
    assert_int_equal(mv_domain_alloc_frames(d, 0, MV_NODE_ANY, 0, &m), MV_ESRCH);
    assert_int_equal(m, 5);
    assert_int_equal(mv_page_get(d, a), MV_ESRCH);
    assert_int_equal(mv_page_get_typed(d, a, MV_PGT_WRITABLE), MV_ESRCH);
    assert_int_equal(mv_domain_set_max_pages(d, 2000), MV_ESRCH);
    struct mv_vcpu_state vs = {.size = sizeof(vs)};
    assert_int_equal(mv_vcpu_get_state(mv_domain_vcpu(d, 0), &vs), 0);
    assert_int_equal(mv_vcpu_set_state(mv_domain_vcpu(d, 0), &vs), MV_ESRCH);
    assert_int_equal(mv_domain_destroy(d), MV_EBUSY);
    /* The hold goes, the frame goes with it, destroy completes. */
    assert_int_equal(mv_page_put(d, a), 0);
    destroy_all_the_way(d, NULL);
    th_host_destroy(h, tp);
}

static void test_domain_frames(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(MEM, "pack:2 numa:1 core:1 pu:1", &tp);
    mv_domain_t *d = make(h, 4, 2048), *e = make(h, 5, 2048);
    struct mv_domain_config c = cfg_of(6, 64);
    c.node_affinity = 1;
    mv_domain_t *onnode1;
    assert_int_equal(mv_domain_create(h, &c, &onnode1), 0);
    mv_mfn_t m, x, n1;
    assert_int_equal(mv_domain_alloc_frames(d, 9, MV_NODE_ANY, MV_ALLOC_ZERO, &m), 0);
    assert_int_equal(mv_domain_alloc_frames(e, 0, MV_NODE_ANY, 0, &x), 0);
    assert_int_equal(mv_domain_alloc_frames(onnode1, 3, MV_NODE_ANY, 0, &n1), 0);
    assert_int_equal(mv_frame_node(h, n1), 1);
    struct mv_page_info pi = {.size = sizeof(pi)};
    assert_int_equal(mv_page_info(h, m + 17, &pi), 0);
    assert_int_equal(pi.owner, 4);
    assert_int_equal(pi.refs, 1);
    assert_int_equal(pi.flags, MV_PAGEF_ALLOCATED);
    assert_int_equal(pi.gfn, MV_INVALID_GFN);
    /* Past the maximum: refused, nothing charged. */
    assert_int_equal(mv_domain_alloc_frames(d, 11, MV_NODE_ANY, 0, &x), MV_ENOSPC);
    assert_int_equal(mv_domain_alloc_frames(d, 0, 9, 0, &x), MV_ENODEV);
    assert_int_equal(mv_domain_alloc_frames(d, 0, MV_NODE_ANY, 0x40, &x), MV_EINVAL);
    /* Freeing: checked for every frame before any changes. */
    assert_int_equal(mv_domain_free_frames(d, m + 1, 1), MV_EINVAL);
    assert_int_equal(mv_domain_free_frames(d, FRAMES + 4096, 0), MV_ERANGE);
    assert_int_equal(mv_domain_free_frames(d, x, 0), MV_EXDEV);
    mv_mfn_t anon;
    assert_int_equal(mv_frame_alloc(h, 0, 0, 0, &anon), 0);
    assert_int_equal(mv_domain_free_frames(d, anon, 0), MV_EPERM);
    assert_int_equal(mv_frame_free(h, m, 0), MV_EPERM); /* a domain's frame */
    assert_int_equal(mv_domain_free_frames(d, m + 8, 3), 0);
    assert_int_equal(mv_domain_free_frames(d, m + 8, 3), MV_EPERM); /* gone */
    assert_int_equal(mv_domain_free_frames(d, m, 4), MV_EPERM);     /* partly gone */
    struct mv_domain_stats ds = {.size = sizeof(ds)};
    assert_int_equal(mv_domain_stats(d, &ds), 0);
    assert_int_equal(ds.pages, 512 - 8);
    /* A held frame outlives its allocation reference. */
    assert_int_equal(mv_page_get(d, m), 0);
    assert_int_equal(mv_domain_free_frames(d, m, 0), 0);
    assert_int_equal(mv_domain_free_frames(d, m, 0), MV_EALREADY);
    assert_int_equal(mv_page_info(h, m, &pi), 0);
    assert_int_equal(pi.owner, 4);
    assert_int_equal(pi.refs, 1);
    assert_int_equal(pi.flags, 0);
    /* Holds taken with mv_page_get are in flight: the recount finds no holder for them. */
    assert_true(th_audit_has(h, "refcount-mismatch"));
    assert_int_equal(mv_page_put(d, m), 0);
    assert_int_equal(mv_page_info(h, m, &pi), 0);
    assert_int_equal(pi.owner, UINT32_MAX);
    /* Max pages can move, not below what is owned. */
    assert_int_equal(mv_domain_set_max_pages(d, 10), MV_EBUSY);
    assert_int_equal(mv_domain_set_max_pages(d, FRAMES + 1), MV_ENOMEM);
    assert_int_equal(mv_domain_set_max_pages(d, 4096), 0);
    assert_int_equal(mv_frame_free(h, anon, 0), 0);
    th_assert_audit_clean(h);
    destroy_all_the_way(d, NULL);
    destroy_all_the_way(e, NULL);
    destroy_all_the_way(onnode1, NULL);
    th_host_destroy(h, tp);
}

static void test_vcpus(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(MEM, NULL, &tp);
    struct mv_domain_config c = cfg_of(9, 16);
    c.nr_vcpus = MV_MAX_VCPUS;
    c.phys_bits = 36;
    mv_domain_t *d;
    assert_int_equal(mv_domain_create(h, &c, &d), 0);
    for (uint32_t i = 0; i < MV_MAX_VCPUS; i++) {
        mv_vcpu_t *v = mv_domain_vcpu(d, i);
        assert_non_null(v);
        assert_int_equal(mv_vcpu_id(v), i);
        assert_ptr_equal(mv_vcpu_domain(v), d);
    }
    assert_null(mv_domain_vcpu(d, MV_MAX_VCPUS));
    mv_vcpu_t *v = mv_domain_vcpu(d, 5);
    struct mv_vcpu_state st = {.size = sizeof(st)};
    assert_int_equal(mv_vcpu_get_state(v, &st), 0);
    assert_true(st.cr0 & MV_CR0_WP);
    st.cr4 |= MV_CR4_PGE | MV_CR4_SMEP | MV_CR4_SMAP;
    st.efer |= MV_EFER_NXE;
    st.cr3 = 0x123000;
    st.flags = MV_VCPUF_GBPAGES;
    assert_int_equal(mv_vcpu_set_state(v, &st), 0);
    struct mv_vcpu_state back = {.size = sizeof(back)};
    assert_int_equal(mv_vcpu_get_state(v, &back), 0);
    assert_memory_equal(&back, &st, sizeof(st));
    /* Refused: a cr3 beyond the 36-bit width, unknown flags, a short struct. */
    struct mv_vcpu_state bad = st;
    bad.cr3 = 1ull << 36;
    assert_int_equal(mv_vcpu_set_state(v, &bad), MV_EINVAL);
    bad = st;
    bad.flags = 0x10;
    assert_int_equal(mv_vcpu_set_state(v, &bad), MV_EINVAL);
    bad.size = 16;
    assert_int_equal(mv_vcpu_set_state(v, &bad), MV_EINVAL);
    assert_int_equal(mv_vcpu_get_state(v, &back), 0);
    assert_memory_equal(&back, &st, sizeof(st));
    destroy_all_the_way(d, NULL);
    th_host_destroy(h, tp);
}

/* The ownership audit names each invariant broken on purpose. */
static void test_audit_names_breakage(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(MEM, NULL, &tp);
    mv_domain_t *d = make(h, 11, 64);
    mv_mfn_t m;
    assert_int_equal(mv_domain_alloc_frames(d, 2, MV_NODE_ANY, 0, &m), 0);
    struct mv_frame *f = mv__frame(h, m);

    atomic_fetch_add(&d->pages, 1);
    assert_true(th_audit_has(h, "domain-page-count"));
    atomic_store(&d->max_pages, 1);
    assert_true(th_audit_has(h, "domain-above-maximum"));
    atomic_store(&d->max_pages, 64);
    atomic_fetch_sub(&d->pages, 1);

    atomic_fetch_add(&f->count, 1); /* a reference nobody holds */
    assert_true(th_audit_has(h, "refcount-mismatch"));
    atomic_fetch_sub(&f->count, 1);

    atomic_store(&f->type_info, ((uint64_t)MV_PGT_L1 << MV_PGT_TYPE_SHIFT) | 1 | MV_PGT_VALIDATED);
    assert_true(th_audit_has(h, "typecount-mismatch"));
    atomic_store(&f->type_info, 1);
    assert_true(th_audit_has(h, "type-count-without-type"));
    atomic_store(&f->type_info, ((uint64_t)MV_PGT_L2 << MV_PGT_TYPE_SHIFT) | MV_PGT_VALIDATED);
    assert_true(th_audit_has(h, "unused-table-validated"));
    atomic_store(&f->type_info, ((uint64_t)MV_PGT_WRITABLE << MV_PGT_TYPE_SHIFT) | MV_PGT_PINNED);
    assert_true(th_audit_has(h, "pin-without-table-type"));
    atomic_store(&f->type_info, ((uint64_t)MV_PGT_WRITABLE << MV_PGT_TYPE_SHIFT) | MV_PGT_VALIDATED);
    th_assert_audit_clean(h); /* a writable type left behind at count 0 is normal */
    atomic_store(&f->type_info, 0);

    /* A frame whose owner names no domain. */
    atomic_store(&mv__frame(h, m + 1)->owner, 300);
    assert_true(th_audit_has(h, "frames-of-vanished-domain"));
    atomic_store(&mv__frame(h, m + 1)->owner, 11);
    atomic_store(&mv__frame(h, m + 2)->count, 0);
    assert_true(th_audit_has(h, "owned-frame-unreferenced"));
    atomic_store(&mv__frame(h, m + 2)->count, 1);
    th_assert_audit_clean(h);
    destroy_all_the_way(d, NULL);
    th_host_destroy(h, tp);
}

/* A host destroyed with live domains (one held by an outside reference) frees them all. */
static void test_host_destroy_with_live_domains(void **state)
{
    (void)state;
    struct th_platform *tp;
    mv_host_t *h = th_host_create(MEM, NULL, &tp);
    mv_domain_t *a = make(h, 20, 512), *b = make(h, 21, 512);
    mv_mfn_t m;
    assert_int_equal(mv_domain_alloc_frames(a, 4, MV_NODE_ANY, 0, &m), 0);
    assert_int_equal(mv_domain_alloc_frames(b, 0, MV_NODE_ANY, 0, &m), 0);
    assert_int_equal(mv_page_get(b, m), 0); /* never dropped */
    mv_host_destroy(h);                     /* ASan would report what leaked */
    th_platform_destroy(tp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_refused),
        cmocka_unit_test(test_lifecycle_returns_everything),
        cmocka_unit_test(test_destroy_preemptible),
        cmocka_unit_test(test_dying_domain),
        cmocka_unit_test(test_domain_frames),
        cmocka_unit_test(test_vcpus),
        cmocka_unit_test(test_audit_names_breakage),
        cmocka_unit_test(test_host_destroy_with_live_domains),
    };
    return cmocka_run_group_tests_name("domain", tests, NULL, NULL);
}
