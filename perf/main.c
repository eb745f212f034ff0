/*
 * perf/main.c - memvirt-bench: registers every module's benchmarks, runs them through the
 * shim with Google Benchmark's own command line, then prints the declared ratios.
 *
 * Google Benchmark reports each benchmark alone; the ratio of a benchmark to its same-run
 * baseline (perf/bench.h, mvb_register_ratio) is computed here from the items per second
 * the shim recorded, and printed after the results: to stdout below the console table, or
 * to stderr when stdout carries JSON or CSV, so that stdout stays machine-readable. Absolute
 * goals (mvb_register_goal_ns: nanoseconds per item) are printed the same way, after them.
 *
 * Exit status: 0; 1 when a run failed (skipped with an error, or a teardown check failed)
 * or the filter matched nothing; 2 for an unknown argument.
 */
#include <stdio.h>
#include <string.h>

#include "bench.h"

/* ---- The ratio table ----------------------------------------------------------------------- */

#define MVB_MAX_RATIOS 64
/* Thread counts looked up for each pair (at most one run per benchmark and count). */
#define MVB_MAX_THREADS 256

struct mvb_ratio {
    const char *bench;
    const char *baseline;
    double goal_max;
};

static struct mvb_ratio ratios[MVB_MAX_RATIOS];
static unsigned nr_ratios;

int mvb_register_ratio(const char *bench, const char *baseline, double goal_max)
{
    if (!bench || !baseline || nr_ratios == MVB_MAX_RATIOS)
        return -1;
    ratios[nr_ratios++] = (struct mvb_ratio){bench, baseline, goal_max};
    return 0;
}

/* One line per thread count both ran with. */
static void print_ratio(FILE *out, const struct mvb_ratio *r)
{
    for (int t = 1; t <= MVB_MAX_THREADS; t++) {
        struct mvb_result b, base;
        if (!mvb_result(r->bench, t, &b) || !mvb_result(r->baseline, t, &base))
            continue;
        if (b.items_per_second <= 0 || base.items_per_second <= 0) {
            fprintf(out, "ratio %s vs %s = n/a (no items per second)\n", b.run_name,
                    base.run_name);
            continue;
        }
        double ratio = base.items_per_second / b.items_per_second;
        fprintf(out, "ratio %s vs %s = %.2fx", b.run_name, base.run_name, ratio);
        if (r->goal_max > 0) {
            bool met = ratio <= r->goal_max;
            fprintf(out, " (goal <= %gx%s)\n", r->goal_max, met ? "" : ": MISSED");
        } else {
            fprintf(out, " (no goal)\n");
        }
    }
}

/* ---- The goal table: absolute time per item ------------------------------------------------ */

struct mvb_goal {
    const char *bench;
    double max_ns;
};

static struct mvb_goal goals[MVB_MAX_RATIOS];
static unsigned nr_goals;

int mvb_register_goal_ns(const char *bench, double max_ns)
{
    if (!bench || !(max_ns > 0) || nr_goals == MVB_MAX_RATIOS)
        return -1;
    goals[nr_goals++] = (struct mvb_goal){bench, max_ns};
    return 0;
}

/* One line per thread count the benchmark ran with. */
static void print_goal(FILE *out, const struct mvb_goal *g)
{
    for (int t = 1; t <= MVB_MAX_THREADS; t++) {
        struct mvb_result b;
        if (!mvb_result(g->bench, t, &b))
            continue;
        if (b.items_per_second <= 0) {
            fprintf(out, "goal %s = n/a (no items per second)\n", b.run_name);
            continue;
        }
        double ns = 1e9 / b.items_per_second;
        fprintf(out, "goal %s = %.1f ns per item (goal <= %g ns%s)\n", b.run_name, ns,
                g->max_ns, ns <= g->max_ns ? "" : ": MISSED");
    }
}

/* ---- Command line ------------------------------------------------------------------------ */

static void print_help(void)
{
    printf("\nmemvirt-bench options (besides Google Benchmark's above):\n"
           "  --mvb-ratios      print benchmark/baseline ratios and goals after the results (default)\n"
           "  --mvb-no-ratios   do not print them\n");
}

/* Remove our own flags from argv (Google Benchmark rejects what it does not know). */
static int strip_own_flags(int argc, char **argv, bool *ratios_on)
{
    int kept = 1;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--mvb-ratios") == 0)
            *ratios_on = true;
        else if (strcmp(argv[i], "--mvb-no-ratios") == 0)
            *ratios_on = false;
        else
            argv[kept++] = argv[i];
    }
    argv[kept] = NULL;
    return kept;
}

int main(int argc, char **argv)
{
    bool ratios_on = true;
    struct mvb_run_info info;

    argc = strip_own_flags(argc, argv, &ratios_on);

    mvb_register_mm();
    mvb_register_ref();
    mvb_register_pv();
    mvb_register_p2m();
    mvb_register_sim();
    mvb_register_shadow();

    int rc = mvb_run(argc, argv, print_help, &info);
    if (rc != 0)
        return rc;

    if (ratios_on) {
        FILE *out = info.console ? stdout : stderr;
        for (unsigned i = 0; i < nr_ratios; i++)
            print_ratio(out, &ratios[i]);
        for (unsigned i = 0; i < nr_goals; i++)
            print_goal(out, &goals[i]);
        fflush(out);
    }
    if (info.failed) {
        fprintf(stderr, "memvirt-bench: %zu run(s) failed\n", info.failed);
        return 1;
    }
    return info.matched ? 0 : 1;
}
