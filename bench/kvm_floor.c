// kvm_floor: the floor for hv1's exit benchmarks. A minimal C VMM on /dev/kvm.
//
// One VM, one vCPU, 2 MiB of RAM, started directly in 64-bit long mode with KVM_SET_SREGS
// (recipe: /work/shared/notes/host-kvm.md §1). No irqchip, no devices: an IO exit goes straight
// back into KVM_RUN, so this is as cheap as an exit can be from userspace on this host.
//
// Measurements (all in one process, printed as one JSON object on stdout):
//   host-timed   guest runs `out %al,$0xE0; dec %rcx; jnz` N times then `hlt`. The host times every
//                KVM_RUN that ends in KVM_EXIT_IO (clock_gettime around the ioctl) and every batch.
//   guest-timed  the same loop framed by rdtsc inside the guest; the guest stores the TSC delta for
//                a batch of N exits at RESULT_GPA and signals `out $0xE1`. This is what hv1's
//                bench_exit guest prints as `BENCH out_exit cycles_per_op=`, so the two compare
//                like with like (the same guest loop overhead is inside both).
//   guest-empty  the same rdtsc-framed loop with `nop` in place of `out`: the loop overhead alone.
//                Guest CPL0 code is emulated on this host (~0.5 us per instruction), so it is not 0.
//   ioctl        KVM_CHECK_EXTENSION(KVM_CAP_SYNC_REGS) on the /dev/kvm fd: the cost of a bare ioctl.
//
// Usage: kvm_floor [--exits N] [--batches B] [--ioctls M]
// Build: gcc -O2 -Wall -Wextra -o kvm_floor kvm_floor.c   (bench/run.py does this, into bench/build/)

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RAM_SIZE (2u << 20)
#define PML4_GPA 0x1000
#define PDPT_GPA 0x2000
#define PD_GPA 0x3000
#define GDT_GPA 0x500
#define TSS_GPA 0x7000
#define RESULT_GPA 0x8000
#define STACK_TOP 0x80000
#define CODE_HOST_TIMED 0x10000
#define CODE_GUEST_TIMED 0x11000
#define CODE_GUEST_EMPTY 0x12000
#define PORT_LOOP 0xE0
#define PORT_DONE 0xE1

// Guest code, assembled by gcc as part of this file (64-bit, position independent: only relative
// jumps; the result address comes in %rdi, the iteration count in %rcx).
__asm__(".pushsection .rodata\n"
        // host-timed: rcx = N. N IO exits on PORT_LOOP, then hlt (KVM_EXIT_HLT, no irqchip).
        ".globl g_host_timed, g_host_timed_end\n"
        "g_host_timed:\n"
        "1: out %al, $0xE0\n"
        "   dec %rcx\n"
        "   jnz 1b\n"
        "   hlt\n"
        "   jmp g_host_timed\n"
        "g_host_timed_end:\n"
        // guest-timed: rcx = N, rdi = result GPA. Forever: rdtsc; N x (out; dec; jnz); rdtsc;
        // store the delta; out PORT_DONE.
        ".globl g_guest_timed, g_guest_timed_end\n"
        "g_guest_timed:\n"
        "   mov %rcx, %r9\n"
        "2: mov %r9, %rcx\n"
        "   lfence\n"
        "   rdtsc\n"
        "   shl $32, %rdx\n"
        "   or %rdx, %rax\n"
        "   mov %rax, %r8\n"
        "3: out %al, $0xE0\n"
        "   dec %rcx\n"
        "   jnz 3b\n"
        "   lfence\n"
        "   rdtsc\n"
        "   shl $32, %rdx\n"
        "   or %rdx, %rax\n"
        "   sub %r8, %rax\n"
        "   mov %rax, (%rdi)\n"
        "   out %al, $0xE1\n"
        "   jmp 2b\n"
        "g_guest_timed_end:\n"
        // guest-empty: as guest-timed with nop for out (loop overhead only).
        ".globl g_guest_empty, g_guest_empty_end\n"
        "g_guest_empty:\n"
        "   mov %rcx, %r9\n"
        "4: mov %r9, %rcx\n"
        "   lfence\n"
        "   rdtsc\n"
        "   shl $32, %rdx\n"
        "   or %rdx, %rax\n"
        "   mov %rax, %r8\n"
        "5: nop\n"
        "   dec %rcx\n"
        "   jnz 5b\n"
        "   lfence\n"
        "   rdtsc\n"
        "   shl $32, %rdx\n"
        "   or %rdx, %rax\n"
        "   sub %r8, %rax\n"
        "   mov %rax, (%rdi)\n"
        "   out %al, $0xE1\n"
        "   jmp 4b\n"
        "g_guest_empty_end:\n"
        ".popsection\n");

extern const uint8_t g_host_timed[], g_host_timed_end[];
extern const uint8_t g_guest_timed[], g_guest_timed_end[];
extern const uint8_t g_guest_empty[], g_guest_empty_end[];

struct vm {
    int kvm, vmfd, vcpufd;
    uint8_t *mem;
    struct kvm_run *run;
};

static void die(const char *what) {
    fprintf(stderr, "kvm_floor: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void fail(const char *fmt, unsigned long long a, unsigned long long b) {
    fprintf(stderr, "kvm_floor: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\n");
    exit(3);
}

static inline double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void put64(uint8_t *mem, uint64_t gpa, uint64_t v) { memcpy(mem + gpa, &v, 8); }

static void setup_memory(struct vm *vm) {
    uint8_t *m = vm->mem;
    // Identity map the first 1 GiB with 2 MiB pages: PML4 -> PDPT -> PD (host-kvm.md §1 step 6).
    put64(m, PML4_GPA, PDPT_GPA | 0x3);
    put64(m, PDPT_GPA, PD_GPA | 0x3);
    for (uint64_t i = 0; i < 512; i++) put64(m, PD_GPA + i * 8, (i << 21) | 0x83);
    // GDT: null, 0x08 code64, 0x10 data, 0x18 TSS (16 bytes).
    put64(m, GDT_GPA + 0x00, 0);
    put64(m, GDT_GPA + 0x08, 0x00af9b000000ffffull);
    put64(m, GDT_GPA + 0x10, 0x00cf93000000ffffull);
    put64(m, GDT_GPA + 0x18, 0x67ull | ((uint64_t)TSS_GPA << 16) | (0x8bull << 40));
    put64(m, GDT_GPA + 0x20, 0);
    memcpy(m + CODE_HOST_TIMED, g_host_timed, (size_t)(g_host_timed_end - g_host_timed));
    memcpy(m + CODE_GUEST_TIMED, g_guest_timed, (size_t)(g_guest_timed_end - g_guest_timed));
    memcpy(m + CODE_GUEST_EMPTY, g_guest_empty, (size_t)(g_guest_empty_end - g_guest_empty));
}

static void setup_vm(struct vm *vm) {
    vm->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (vm->kvm < 0) die("open /dev/kvm");
    vm->vmfd = ioctl(vm->kvm, KVM_CREATE_VM, 0);
    if (vm->vmfd < 0) die("KVM_CREATE_VM");

    vm->mem = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (vm->mem == MAP_FAILED) die("mmap guest RAM");
    setup_memory(vm);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .flags = 0, .guest_phys_addr = 0, .memory_size = RAM_SIZE,
        .userspace_addr = (uint64_t)(uintptr_t)vm->mem,
    };
    if (ioctl(vm->vmfd, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

    vm->vcpufd = ioctl(vm->vmfd, KVM_CREATE_VCPU, 0);
    if (vm->vcpufd < 0) die("KVM_CREATE_VCPU");
    int mmap_size = ioctl(vm->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (mmap_size < (int)sizeof(struct kvm_run)) die("KVM_GET_VCPU_MMAP_SIZE");
    vm->run = mmap(NULL, (size_t)mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpufd, 0);
    if (vm->run == MAP_FAILED) die("mmap kvm_run");

    // CPUID: what KVM supports (long mode, TSC), as any VMM would pass.
    int nent = 256;
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + (size_t)nent * sizeof(struct kvm_cpuid_entry2));
    if (!cpuid) die("calloc");
    cpuid->nent = (uint32_t)nent;
    if (ioctl(vm->kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
    if (ioctl(vm->vcpufd, KVM_SET_CPUID2, cpuid) < 0) die("KVM_SET_CPUID2");
    free(cpuid);

    struct kvm_sregs sregs;
    if (ioctl(vm->vcpufd, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    struct kvm_segment cs = {
        .base = 0, .limit = 0xffffffff, .selector = 0x08, .type = 11, .present = 1,
        .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1,
    };
    struct kvm_segment ds = {
        .base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 3, .present = 1,
        .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1,
    };
    struct kvm_segment tr = {
        .base = TSS_GPA, .limit = 0x67, .selector = 0x18, .type = 11, .present = 1, .s = 0,
    };
    sregs.cs = cs;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = ds;
    sregs.tr = tr;
    sregs.gdt.base = GDT_GPA;
    sregs.gdt.limit = 0x27;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;  // no exceptions expected; any would end in KVM_EXIT_SHUTDOWN and be reported
    sregs.cr0 = 0x80050033;
    sregs.cr3 = PML4_GPA;
    sregs.cr4 = 0x20;
    sregs.efer = 0xD01;
    if (ioctl(vm->vcpufd, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
}

static void set_entry(struct vm *vm, uint64_t rip, uint64_t rcx, uint64_t rdi) {
    struct kvm_regs regs;
    memset(&regs, 0, sizeof(regs));
    regs.rip = rip;
    regs.rsp = STACK_TOP;  // offset 48 in struct kvm_regs (host-kvm.md §0)
    regs.rflags = 2;
    regs.rcx = rcx;
    regs.rdi = rdi;
    if (ioctl(vm->vcpufd, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
}

static void unexpected_exit(struct vm *vm) {
    struct kvm_regs regs;
    ioctl(vm->vcpufd, KVM_GET_REGS, &regs);
    fail("unexpected exit reason %llu at rip 0x%llx", vm->run->exit_reason, regs.rip);
}

// One KVM_RUN; returns the IO port of an IO exit, -1 for HLT; anything else is fatal.
static inline int run_once(struct vm *vm) {
    if (ioctl(vm->vcpufd, KVM_RUN, 0) < 0) die("KVM_RUN");
    if (vm->run->exit_reason == KVM_EXIT_IO) return vm->run->io.port;
    if (vm->run->exit_reason == KVM_EXIT_HLT) return -1;
    unexpected_exit(vm);
    return -2;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

struct stats {
    double median, p10, p90, min, mean;
    long n;
};

// Percentiles by nearest rank on a sorted copy (same rule as bench/run.py); `samples` is not touched.
static struct stats summarize(const double *samples, long n) {
    struct stats s = {0};
    if (n <= 0) return s;
    double *v = malloc((size_t)n * sizeof(double));
    if (!v) die("malloc");
    memcpy(v, samples, (size_t)n * sizeof(double));
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    double sum = 0;
    for (long i = 0; i < n; i++) sum += v[i];
    s.n = n;
    s.min = v[0];
    s.mean = sum / (double)n;
    s.p10 = v[(long)(0.10 * (double)(n - 1) + 0.5)];
    s.median = v[(long)(0.50 * (double)(n - 1) + 0.5)];
    s.p90 = v[(long)(0.90 * (double)(n - 1) + 0.5)];
    free(v);
    return s;
}

// samples (may be NULL): the raw per-batch values, in measurement order, so that bench/run.py can
// pool several runs of this program.
static void print_stats(const char *key, struct stats s, const char *unit, const double *samples, int last) {
    printf("  \"%s\": {\"unit\": \"%s\", \"median\": %.4f, \"p10\": %.4f, \"p90\": %.4f, \"min\": %.4f, "
           "\"mean\": %.4f, \"n\": %ld",
           key, unit, s.median, s.p10, s.p90, s.min, s.mean, s.n);
    if (samples) {
        printf(", \"samples\": [");
        for (long i = 0; i < s.n; i++) printf("%s%.4f", i ? ", " : "", samples[i]);
        printf("]");
    }
    printf("}%s\n", last ? "" : ",");
}

// Host-timed: `batches` batches of `exits` IO exits. Fills per-exit and per-batch samples (us).
static void bench_host_timed(struct vm *vm, long exits, long batches, double *per_exit, double *per_batch) {
    long k = 0;
    for (long b = 0; b < batches; b++) {
        set_entry(vm, CODE_HOST_TIMED, (uint64_t)exits, 0);
        double t_batch = now_us();
        for (long i = 0; i < exits; i++) {
            double t0 = now_us();
            int port = run_once(vm);
            double t1 = now_us();
            if (port != PORT_LOOP) fail("host-timed: exit %llu of batch %llu is not the loop port", i, b);
            per_exit[k++] = t1 - t0;
        }
        per_batch[b] = (now_us() - t_batch) / (double)exits;
        if (run_once(vm) != -1) fail("host-timed: no hlt after %llu exits (batch %llu)", exits, b);
    }
}

// Guest-timed: the guest loops forever, one rdtsc-framed batch of `exits` iterations at a time.
// Fills per-batch guest cycles per iteration. The first batch is discarded as warm-up.
static void bench_guest_timed(struct vm *vm, uint64_t entry, long exits, long batches, double *cycles) {
    set_entry(vm, entry, (uint64_t)exits, RESULT_GPA);
    long b = -1;
    while (b < batches) {
        int port = run_once(vm);
        if (port == PORT_LOOP) continue;
        if (port != PORT_DONE) fail("guest-timed: unexpected port 0x%llx (batch %llu)", (unsigned)port, b);
        uint64_t delta;
        memcpy(&delta, vm->mem + RESULT_GPA, 8);
        if (b >= 0) cycles[b] = (double)delta / (double)exits;
        b++;
    }
}

static void bench_ioctl(struct vm *vm, long n, double *samples) {
    for (long i = 0; i < n; i++) {
        double t0 = now_us();
        int r = ioctl(vm->kvm, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS);
        double t1 = now_us();
        if (r < 0) die("KVM_CHECK_EXTENSION");
        samples[i] = t1 - t0;
    }
}

static long arg_long(int argc, char **argv, const char *name, long dflt) {
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return strtol(argv[i + 1], NULL, 0);
    return dflt;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            printf("usage: kvm_floor [--exits N] [--batches B] [--ioctls M]\n");
            return 0;
        }
    long exits = arg_long(argc, argv, "--exits", 200);
    long batches = arg_long(argc, argv, "--batches", 30);
    long ioctls = arg_long(argc, argv, "--ioctls", 20000);
    if (exits < 1 || batches < 1 || ioctls < 1) fail("bad counts %llu/%llu", exits, batches);

    struct vm vm;
    setup_vm(&vm);
    int tsc_khz = ioctl(vm.vcpufd, KVM_GET_TSC_KHZ, 0);
    if (tsc_khz <= 0) die("KVM_GET_TSC_KHZ");

    double *per_exit = calloc((size_t)(exits * batches), sizeof(double));
    double *per_batch = calloc((size_t)batches, sizeof(double));
    double *g_out = calloc((size_t)batches, sizeof(double));
    double *g_empty = calloc((size_t)batches, sizeof(double));
    double *io = calloc((size_t)ioctls, sizeof(double));
    if (!per_exit || !per_batch || !g_out || !g_empty || !io) die("calloc");

    // Warm-up: fault in pages, settle caches and the vCPU thread.
    double *warm = calloc((size_t)exits, sizeof(double));
    double warm_b[1];
    bench_host_timed(&vm, exits, 1, warm, warm_b);
    free(warm);

    bench_host_timed(&vm, exits, batches, per_exit, per_batch);
    bench_guest_timed(&vm, CODE_GUEST_TIMED, exits, batches, g_out);
    bench_guest_timed(&vm, CODE_GUEST_EMPTY, exits, batches, g_empty);
    bench_ioctl(&vm, ioctls, io);

    struct stats s_exit = summarize(per_exit, exits * batches);
    struct stats s_batch = summarize(per_batch, batches);
    struct stats s_gout = summarize(g_out, batches);
    struct stats s_gempty = summarize(g_empty, batches);
    struct stats s_io = summarize(io, ioctls);

    printf("{\n");
    printf("  \"exit_roundtrip_us_median\": %.4f,\n", s_exit.median);
    printf("  \"p10\": %.4f,\n", s_exit.p10);
    printf("  \"p90\": %.4f,\n", s_exit.p90);
    printf("  \"n\": %ld,\n", s_exit.n);
    printf("  \"tsc_khz\": %d,\n", tsc_khz);
    printf("  \"exits_per_batch\": %ld,\n", exits);
    printf("  \"batches\": %ld,\n", batches);
    print_stats("host_exit_roundtrip_us", s_exit, "us per KVM_RUN ending in KVM_EXIT_IO", NULL, 0);
    print_stats("host_batch_us_per_exit", s_batch, "us per exit, mean over one batch", per_batch, 0);
    print_stats("guest_out_loop_cycles", s_gout, "guest TSC cycles per (out; dec; jnz), per batch", g_out, 0);
    print_stats("guest_empty_loop_cycles", s_gempty, "guest TSC cycles per (nop; dec; jnz), per batch", g_empty, 0);
    print_stats("check_extension_us", s_io, "us per KVM_CHECK_EXTENSION ioctl", NULL, 1);
    printf("}\n");
    return 0;
}
