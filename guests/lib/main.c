/* BSP start-up in C: copy the Multiboot information into the image, set up this CPU, run kmain. */
#include "guest.h"

#define MB_BOOT_MAGIC 0x2BADB002

struct boot_info boot_info;
extern uint32_t mb_magic, mb_info;   /* saved by _start */

/* Copy a NUL-terminated string at a physical address (identity-mapped below 4 GiB) into dst. */
static void copy_str(char *dst, size_t size, uint32_t pa)
{
    const char *s = (const char *)(uint64_t)pa;
    size_t i = 0;
    if (pa)
        for (; i + 1 < size && s[i]; i++)
            dst[i] = s[i];
    dst[i] = 0;
}

static uint32_t rd32(uint64_t pa) { return *(volatile uint32_t *)pa; }
static uint64_t rd64(uint64_t pa) { return *(volatile uint64_t *)pa; }

/* Multiboot v1 information structure, Multiboot spec 0.6.96 section 3.3. The loader puts it (and the command
 * line, modules) outside our image; we copy what tests need so nothing refers to it later. */
static void parse_multiboot(void)
{
    struct boot_info *bi = &boot_info;
    bi->magic = mb_magic;
    if (mb_magic != MB_BOOT_MAGIC || !mb_info) {
        printf("boot: no Multiboot info (eax=0x%x)\n", mb_magic);
        return;
    }
    uint64_t mbi = mb_info;
    uint32_t flags = rd32(mbi);
    bi->mb_flags = flags;
    if (flags & (1u << 0)) {
        bi->mem_lower_kb = rd32(mbi + 4);
        bi->mem_upper_kb = rd32(mbi + 8);
    }
    if (flags & (1u << 2))
        copy_str(bi->cmdline, sizeof(bi->cmdline), rd32(mbi + 16));
    if (flags & (1u << 3)) {
        uint32_t count = rd32(mbi + 20);
        uint64_t mods = rd32(mbi + 24);
        for (uint32_t i = 0; i < count && i < BOOT_MAX_MODULES; i++) {
            struct boot_module *m = &bi->modules[i];
            m->start = rd32(mods + 16 * i);
            m->end = rd32(mods + 16 * i + 4);
            copy_str(m->name, sizeof(m->name), rd32(mods + 16 * i + 8));
        }
        bi->nr_modules = count < BOOT_MAX_MODULES ? count : BOOT_MAX_MODULES;
    }
    if (flags & (1u << 6)) {   /* entries: u32 size (excluding itself), u64 base, u64 len, u32 type */
        uint64_t p = rd32(mbi + 48), end = p + rd32(mbi + 44);
        while (p < end && bi->nr_mmap < BOOT_MAX_MMAP) {
            struct boot_mmap_entry *e = &bi->mmap[bi->nr_mmap++];
            e->base = rd64(p + 4);
            e->len = rd64(p + 12);
            e->type = rd32(p + 20);
            p += rd32(p) + 4;
        }
    }
}

__attribute__((noreturn)) void boot_bsp(void)
{
    idt_init();
    cpu_setup(0);
    parse_multiboot();
    boot_info.nr_cpus = smp_cpu_count();
    kmain(&boot_info);
    exit_with_summary();
}

/* ---- command line ---- */
static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n'; }

/* Token that is "key" or starts with "key=": returns the character after key, or NULL. */
static const char *find_token(const char *key)
{
    size_t n = strlen(key);
    for (const char *p = boot_info.cmdline; *p;) {
        while (is_space(*p))
            p++;
        if (!strncmp(p, key, n) && (p[n] == '=' || p[n] == 0 || is_space(p[n])))
            return p + n;
        while (*p && !is_space(*p))
            p++;
    }
    return NULL;
}

const char *cmdline_value(const char *key)
{
    const char *p = find_token(key);
    return p && *p == '=' ? p + 1 : NULL;
}

bool cmdline_flag(const char *word) { return find_token(word) != NULL; }

long cmdline_int(const char *key, long dflt)
{
    const char *p = cmdline_value(key);
    if (!p || !*p || is_space(*p))
        return dflt;
    bool neg = *p == '-';
    if (neg)
        p++;
    unsigned base = 10;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        base = 16;
        p += 2;
    }
    long v = 0;
    for (;; p++) {
        int d = *p >= '0' && *p <= '9' ? *p - '0' : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10
              : *p >= 'A' && *p <= 'F' ? *p - 'A' + 10 : 99;
        if (d >= (int)base)
            break;
        v = v * base + d;
    }
    return neg ? -v : v;
}

/* ---- CPUID ---- */
bool cpu_has_hypervisor(void) { return cpuid(1, 0).ecx & (1u << 31); }
uint32_t hv_max_leaf(void) { return cpu_has_hypervisor() ? cpuid(0x40000000, 0).eax : 0; }
bool hv_is_hv1(void) { return hv_max_leaf() >= 0x40000001 && cpuid(0x40000001, 0).eax == 0x31237648; }
void hv_vendor(char out[13])
{
    struct cpuid_regs r = cpu_has_hypervisor() ? cpuid(0x40000000, 0) : (struct cpuid_regs){ 0 };
    memcpy(out, &r.ebx, 4);
    memcpy(out + 4, &r.ecx, 4);
    memcpy(out + 8, &r.edx, 4);
    out[12] = 0;
}

/* ---- strings ---- */
void *memset(void *d, int c, size_t n)
{
    void *r = d;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return r;
}

void *memcpy(void *d, const void *s, size_t n)
{
    void *r = d;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    return r;
}

void *memmove(void *d, const void *s, size_t n)
{
    unsigned char *dp = d;
    const unsigned char *sp = s;
    if (dp <= sp || dp >= sp + n)
        return memcpy(d, s, n);
    while (n--)
        dp[n] = sp[n];
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            return x[i] - y[i];
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++)
        if (*a != *b || !*a)
            return (unsigned char)*a - (unsigned char)*b;
    return 0;
}
