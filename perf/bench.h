/*
 * perf/bench.h - the C face of memvirt-bench: a small benchmark API over Google Benchmark.
 *
 * Benchmarks are written in C, one file per module (perf/bench_<module>.c exposing
 * `void mvb_register_<module>(void)`); perf/shim.cc, the only C++ file of the project,
 * implements everything below except the ratio and goal tables, which live in perf/main.c.
 *
 * A benchmark is a run callback plus optional setup and teardown hooks:
 *
 *   static void run(mvb_state_t *st, void *user)
 *   {
 *       uint64_t n;
 *       while (mvb_keep_running_batch(st, &n)) {
 *           for (uint64_t i = 0; i < n; i++) {
 *               if (step(user) != 0) {
 *                   mvb_skip_with_error(st, "step failed");
 *                   break;            // the next mvb_keep_running_batch returns false
 *               }
 *           }
 *       }
 *       mvb_set_items_processed(st, mvb_iterations(st));
 *   }
 *
 * Semantics, as Google Benchmark 1.7.1 defines them:
 *  - A run executes the callback in `threads` threads at once; each thread has its own
 *    state and iteration budget. The setup hook is called once per run before the threads
 *    start and the teardown hook once after they all returned; Google Benchmark makes
 *    several runs per benchmark while it sizes the iteration count.
 *  - Only the keep-running loop is timed. The batch size is chosen by the shim and never
 *    exceeds what the run asked for, so mvb_iterations() is exact.
 *  - Counters set by several threads are summed across threads before the flags apply.
 *  - Rates divide by CPU time unless the benchmark is registered with MVB_REAL_TIME
 *    (wall-clock time: the right measure for multi-threaded throughput) or
 *    MVB_MANUAL_TIME (the time reported with mvb_add_manual_time).
 */
#ifndef MVB_BENCH_H
#define MVB_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One thread's view of a running benchmark. */
typedef struct mvb_state mvb_state_t;

/* The measured body; loops with mvb_keep_running_batch until it returns false. */
typedef void (*mvb_run_fn)(mvb_state_t *st, void *user);
/* Once per run, before its `threads` threads start; non-zero fails (skips) the run. */
typedef int (*mvb_setup_fn)(void *user, int threads);
/* Once per run, after every thread returned; also called when setup failed. */
typedef void (*mvb_teardown_fn)(void *user, int threads);

/* Benchmark flags */
#define MVB_REAL_TIME 0x1u   /* rates and time per iteration from wall-clock time */
#define MVB_MANUAL_TIME 0x2u /* from the time given to mvb_add_manual_time */

#define MVB_MAX_THREAD_COUNTS 8

struct mvb_bench {
    const char *name;         /* "module/what"; copied */
    mvb_run_fn run;
    void *user;               /* passed to every callback */
    mvb_setup_fn setup;       /* optional */
    mvb_teardown_fn teardown; /* optional */
    /* Thread counts to run with, in order, ended by 0 or the array's end; all 0: one. */
    int threads[MVB_MAX_THREAD_COUNTS];
    unsigned flags;           /* MVB_* above */
};

/*
 * Register a benchmark; call it before mvb_run. 0, or -1 when the description is invalid
 * (no name or run callback, a negative thread count, both time flags) or the table of
 * benchmarks is full.
 */
int mvb_register(const struct mvb_bench *b);

/* ---- Inside the run callback ----------------------------------------------------------- */

/*
 * Whether to run another batch; if so, *n is its size (at least 1). Returns false once the
 * thread's budget is spent or after mvb_skip_with_error.
 */
bool mvb_keep_running_batch(mvb_state_t *st, uint64_t *n);
/* Iterations this thread has been handed so far. */
uint64_t mvb_iterations(const mvb_state_t *st);

/* Items this thread processed; reported as items_per_second. */
void mvb_set_items_processed(mvb_state_t *st, uint64_t items);

/* Counter flags */
#define MVB_COUNTER_RATE 0x1u          /* divided by the run's time: a per-second rate */
#define MVB_COUNTER_PER_ITERATION 0x2u /* divided by the iterations of all threads */
#define MVB_COUNTER_PER_THREAD 0x4u    /* divided by the thread count */
#define MVB_COUNTER_BINARY 0x8u        /* printed with 1024-based prefixes (bytes) */

/* Set a named counter (summed across threads, then the flags apply). */
void mvb_counter(mvb_state_t *st, const char *name, double value, unsigned flags);

/* With MVB_MANUAL_TIME: add the measured time of the last batch, in seconds. */
void mvb_add_manual_time(mvb_state_t *st, double seconds);

/*
 * Fail this run with a message (copied): the keep-running loop ends at its next check, so
 * leave the current batch (break) right after calling it.
 */
void mvb_skip_with_error(mvb_state_t *st, const char *msg);
bool mvb_error_occurred(const mvb_state_t *st);

int mvb_thread_index(const mvb_state_t *st); /* 0 .. mvb_threads() - 1 */
int mvb_threads(const mvb_state_t *st);

/* Stop and restart the clock around untimed work inside the loop (costly: per batch). */
void mvb_pause_timing(mvb_state_t *st);
void mvb_resume_timing(mvb_state_t *st);

/* ---- Outside a run ----------------------------------------------------------------------- */

/*
 * A failure no run can report (e.g. a teardown that found a leak): printed to stderr and
 * makes memvirt-bench exit with status 1.
 */
void mvb_report_failure(const char *bench, const char *msg);

/* ---- Running and results --------------------------------------------------------------- */

struct mvb_run_info {
    size_t matched;  /* benchmarks the filter selected */
    size_t failed;   /* runs reported with an error, plus mvb_report_failure calls */
    bool console;    /* results went to stdout as the console table (not JSON or CSV) */
};

/*
 * Run the registered benchmarks with Google Benchmark's own command line (every
 * --benchmark_* flag works). `help`, optional, prints extra lines after Google Benchmark's
 * --help text. 0, or 2 when argv holds an argument Google Benchmark does not know.
 */
int mvb_run(int argc, char **argv, void (*help)(void), struct mvb_run_info *info);

struct mvb_result {
    const char *run_name;    /* full name, e.g. "mm/alloc_free_order0/real_time/threads:2" */
    double items_per_second; /* 0 when the benchmark set no item count */
    double real_ns;          /* wall-clock time per iteration, in nanoseconds */
};

/*
 * The last result of benchmark `name` run with `threads` threads (the median when
 * repetitions were asked for). false when it did not run or failed.
 */
bool mvb_result(const char *name, int threads, struct mvb_result *out);

/* ---- Ratios (perf/main.c) --------------------------------------------------------------- */

/*
 * Declare that `bench` should run at most `goal_max` times slower than `baseline`
 * (items per second, same thread count); goal_max <= 0 prints the ratio without a goal.
 * After the run, memvirt-bench prints one line per thread count both ran with.
 * 0, or -1 when the table is full.
 */
int mvb_register_ratio(const char *bench, const char *baseline, double goal_max);

/*
 * Declare that `bench` should take at most `max_ns` nanoseconds per item (from its items
 * per second). After the run, memvirt-bench prints one line per thread count it ran with,
 * below the ratios. 0, or -1 when the table is full or max_ns <= 0.
 */
int mvb_register_goal_ns(const char *bench, double max_ns);

/* ---- Modules: perf/bench_<module>.c, called by perf/main.c ---------------------------- */

void mvb_register_mm(void);
void mvb_register_ref(void);
void mvb_register_pv(void);
void mvb_register_p2m(void);
void mvb_register_sim(void);
void mvb_register_shadow(void);

#ifdef __cplusplus
}
#endif
#endif
