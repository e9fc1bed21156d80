/* tlbstress: TLB shootdowns in a Linux guest, checked.
 *
 * Built by `cargo xtask` (cc -static -pthread) into the Linux guests' initramfs as
 * /bin/tlbstress. One worker thread per other online CPU, each pinned to its CPU, keeps
 * reading one page at a fixed address so the translation sits in that CPU's TLB. The main
 * thread, pinned to its own CPU, replaces the page ROUNDS times (mmap MAP_FIXED of a fresh
 * anonymous page, which unmaps the old one: the kernel must invalidate the other CPUs'
 * translations with TLB-shootdown IPIs before the old page can be reused, SDM Vol. 3A 4.10.5
 * "Propagation of Paging-Structure Changes to Multiple Processors") and writes the round
 * number into the new page. A worker that sees round r published must read r from the page;
 * an older value means it used a stale translation.
 *
 * Prints "tlbstress: <rounds> remaps, <workers> workers, <n> stale reads" and exits 0 when
 * n is 0, 1 otherwise (2 on a setup error). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define ROUNDS 300
#define MAX_WORKERS 63

static volatile int *page;
static atomic_int round_published = -1;
static atomic_int acked[MAX_WORKERS];
static atomic_long stale;
static atomic_int stop;

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

struct worker { int index, cpu; };

static void *work(void *arg) {
    struct worker *w = arg;
    pin(w->cpu);
    int last = -1;
    while (!atomic_load(&stop)) {
        int r = atomic_load_explicit(&round_published, memory_order_acquire);
        if (r < 0) {
            continue;
        }
        /* Touch the page every time round: its translation stays in this CPU's TLB. */
        int v = *page;
        if (r != last) {
            if (v < r) {
                atomic_fetch_add(&stale, 1);
            }
            last = r;
            atomic_store_explicit(&acked[w->index], r, memory_order_release);
        }
    }
    return NULL;
}

int main(void) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int workers = cpus - 1 > MAX_WORKERS ? MAX_WORKERS : (int)cpus - 1;
    if (workers < 1) {
        printf("tlbstress: needs 2 CPUs or more (%ld online)\n", cpus);
        return 2;
    }
    void *at = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (at == MAP_FAILED) {
        perror("tlbstress: mmap");
        return 2;
    }
    page = at;
    *page = -1;
    pin(0);
    pthread_t threads[MAX_WORKERS];
    struct worker ws[MAX_WORKERS];
    for (int i = 0; i < workers; i++) {
        ws[i] = (struct worker){ i, i + 1 };
        atomic_store(&acked[i], -1);
        pthread_create(&threads[i], NULL, work, &ws[i]);
    }
    for (int r = 0; r < ROUNDS; r++) {
        /* A fresh page at the same address: the old one is unmapped (and its frame freed). */
        void *p = mmap(at, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (p != at) {
            perror("tlbstress: mmap MAP_FIXED");
            return 2;
        }
        *page = r;
        atomic_store_explicit(&round_published, r, memory_order_release);
        for (int i = 0; i < workers; i++) {
            while (atomic_load_explicit(&acked[i], memory_order_acquire) < r) {
                sched_yield();
            }
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < workers; i++) {
        pthread_join(threads[i], NULL);
    }
    long n = atomic_load(&stale);
    printf("tlbstress: %d remaps, %d workers, %ld stale reads\n", ROUNDS, workers, n);
    return n == 0 ? 0 : 1;
}
