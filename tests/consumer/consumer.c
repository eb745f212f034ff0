/*
 * tests/consumer/consumer.c - a program built outside the tree against an installed memvirt.
 *
 * tests/install_check.sh compiles it with the flags pkg-config gives, as C and as C++
 * (which only links if the public headers carry their extern "C" guards), against the
 * shared and the static library, and runs each build. It checks that the headers and the
 * library it runs with agree on the version, and, where the library carries the default
 * posix platform, that a small host works end to end. Written in the common subset of C11
 * and C++. Prints one line per check; exit status 0 when all passed.
 */
#include <stdio.h>
#include <string.h>

#include <memvirt/memvirt.h>

static int failures;

static void check(int cond, const char *what)
{
    printf("consumer: %s %s\n", cond ? "ok  " : "FAIL", what);
    if (!cond)
        failures++;
}

static void check_version(void)
{
    printf("consumer: memvirt %s (headers %s), posix platform %d, fault injection %d\n",
           mv_version(), MV_VERSION_STRING, MV_HAVE_POSIX_PLATFORM, MV_HAVE_FAULT_INJECTION);
    check(strcmp(mv_version(), MV_VERSION_STRING) == 0, "mv_version() matches MV_VERSION_STRING");
    check(mv_version_number() == (uint32_t)MV_VERSION, "mv_version_number() matches MV_VERSION");
    check(strcmp(mv_strerror_name(MV_EINVAL), "MV_EINVAL") == 0, "mv_strerror_name(MV_EINVAL)");
}

#if MV_HAVE_POSIX_PLATFORM
/* A one-node synthetic host of 8 MiB: allocate a block, write it, free it, audit. */
static void check_host(void)
{
    struct mv_host_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.size = sizeof(cfg);
    cfg.mem_bytes = 8u << 20;
    cfg.topology = "pack:1 numa:1 core:2 pu:1";

    mv_host_t *h = NULL;
    int rc = mv_host_create(&cfg, &h);
    check(rc == 0, "mv_host_create on the posix platform");
    if (rc != 0) {
        printf("consumer: mv_host_create: %s\n", mv_strerror(rc));
        return;
    }

    mv_mfn_t mfn = MV_INVALID_MFN;
    rc = mv_frame_alloc(h, 2, MV_NODE_ANY, MV_ALLOC_ZERO, &mfn);
    check(rc == 0, "mv_frame_alloc order 2");
    if (rc == 0) {
        unsigned char *va = (unsigned char *)mv_frame_va(h, mfn);
        check(va != NULL, "mv_frame_va");
        if (va)
            memset(va, 0xa5, 4u * MV_PAGE_SIZE);
        check(mv_frame_free(h, mfn, 2) == 0, "mv_frame_free");
    }
    check(mv_host_trim(h) == 0, "mv_host_trim");

    struct mv_audit_report rep;
    memset(&rep, 0, sizeof(rep));
    rep.size = sizeof(rep);
    check(mv_host_audit(h, &rep) == 0 && rep.nr_violations == 0, "mv_host_audit is clean");
    mv_host_destroy(h);
}
#endif

int main(void)
{
#ifdef __cplusplus
    printf("consumer: built as C++\n");
#else
    printf("consumer: built as C\n");
#endif
    check_version();
#if MV_HAVE_POSIX_PLATFORM
    check_host();
#else
    printf("consumer: no posix platform in this library: host checks skipped\n");
#endif
    printf("consumer: %s\n", failures ? "FAILED" : "all checks passed");
    return failures ? 1 : 0;
}
