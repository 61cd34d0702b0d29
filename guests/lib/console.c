/* COM1 output, printf, and the PASS/FAIL/SKIP/SUMMARY result lines. */
#include "guest.h"

#define COM1      0x3F8
#define COM1_LSR  (COM1 + 5)
#define LSR_THRE  0x20
#define DEBUG_EXIT_PORT 0xF4

/* The UART is used as the platform leaves it (QEMU and hv1 need no baud/line setup), which keeps the number of
 * port exits down and avoids relying on DLAB emulation: poll LSR.THRE, then write THR. */
void serial_init(void) {}

static void serial_putc(char c)
{
    for (int i = 0; i < 100000 && !(inb(COM1_LSR) & LSR_THRE); i++)   /* bounded: no UART means no hang */
        pause();
    outb(COM1, (uint8_t)c);
}

/* ---- console lock: re-entrant per CPU, interrupts off while held (a handler may print) ---- */
static volatile uint32_t lock_owner = ~0u;   /* cpu index + 1 would also do; ~0u = free */
static uint32_t lock_depth;
static uint64_t lock_flags;

void print_lock(void)
{
    uint64_t f = irq_save();
    uint32_t me = cpu_index();
    if (lock_owner == me) {
        lock_depth++;
        return;
    }
    /* Bounded spin: if another CPU died holding the lock, print anyway rather than hang the test. */
    for (uint32_t i = 0; i < 2000000 && !atomic_cmpxchg(&lock_owner, ~0u, me); i++)
        pause();
    lock_owner = me;
    lock_depth = 1;
    lock_flags = f;
}

void print_unlock(void)
{
    if (--lock_depth)
        return;
    uint64_t f = lock_flags;
    atomic_store(&lock_owner, ~0u);
    restore_flags(f);
}

/* ---- formatter core: writes through a sink so printf needs no buffer and snprintf shares the code ---- */
struct sink {
    char *buf;
    size_t size, len;   /* buf == NULL: serial */
};

static void emit(struct sink *s, char c)
{
    if (!s->buf)
        serial_putc(c);
    else if (s->len + 1 < s->size)
        s->buf[s->len] = c;
    s->len++;
}

static void emit_num(struct sink *s, uint64_t v, unsigned base, bool neg, int width, char pad, bool left,
                     bool upper)
{
    char tmp[24];
    int n = 0;
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    do {
        tmp[n++] = digits[v % base];
        v /= base;
    } while (v);
    int len = n + (neg ? 1 : 0);
    if (neg && pad == '0')
        emit(s, '-');
    if (!left)
        for (; width > len; width--)
            emit(s, pad);
    if (neg && pad != '0')
        emit(s, '-');
    while (n)
        emit(s, tmp[--n]);
    if (left)
        for (; width > len; width--)
            emit(s, ' ');
}

static void vformat(struct sink *s, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            emit(s, *fmt);
            continue;
        }
        fmt++;
        bool left = false;
        char pad = ' ';
        for (;; fmt++) {
            if (*fmt == '-')
                left = true;
            else if (*fmt == '0')
                pad = '0';
            else
                break;
        }
        int width = 0;
        for (; *fmt >= '0' && *fmt <= '9'; fmt++)
            width = width * 10 + (*fmt - '0');
        int lng = 0;   /* 0 = int, 1 = long / long long / size_t */
        for (; *fmt == 'l' || *fmt == 'z' || *fmt == 'h'; fmt++)
            if (*fmt != 'h')
                lng = 1;
        if (left)
            pad = ' ';
        switch (*fmt) {
        case 'd':
        case 'i': {
            int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
            emit_num(s, v < 0 ? -(uint64_t)v : (uint64_t)v, 10, v < 0, width, pad, left, false);
            break;
        }
        case 'u':
        case 'x':
        case 'X':
        case 'o': {
            uint64_t v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned int);
            unsigned base = *fmt == 'u' ? 10 : *fmt == 'o' ? 8 : 16;
            emit_num(s, v, base, false, width, pad, left, *fmt == 'X');
            break;
        }
        case 'p':
            emit(s, '0');
            emit(s, 'x');
            emit_num(s, (uint64_t)va_arg(ap, void *), 16, false, width, pad, left, false);
            break;
        case 'c': {
            char c = (char)va_arg(ap, int);
            if (!left)
                for (; width > 1; width--)
                    emit(s, ' ');
            emit(s, c);
            if (left)
                for (; width > 1; width--)
                    emit(s, ' ');
            break;
        }
        case 's': {
            const char *str = va_arg(ap, const char *);
            if (!str)
                str = "(null)";
            int len = (int)strlen(str);
            if (!left)
                for (; width > len; width--)
                    emit(s, ' ');
            while (*str)
                emit(s, *str++);
            if (left)
                for (; width > len; width--)
                    emit(s, ' ');
            break;
        }
        case '%':
            emit(s, '%');
            break;
        case 0:
            return;
        default:   /* unknown conversion: print it verbatim so the mistake is visible */
            emit(s, '%');
            emit(s, *fmt);
        }
    }
}

int vprintf(const char *fmt, va_list ap)
{
    struct sink s = { 0 };
    print_lock();
    vformat(&s, fmt, ap);
    print_unlock();
    return (int)s.len;
}

int printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vprintf(fmt, ap);
    va_end(ap);
    return n;
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct sink s = { buf, size, 0 };
    vformat(&s, fmt, ap);
    if (size)
        buf[s.len < size ? s.len : size - 1] = 0;
    return (int)s.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

/* ---- result lines ---- */
static volatile uint32_t n_pass, n_fail, n_skip;

static bool vcheckf(bool cond, const char *rule, const char *fmt, va_list *ap)
{
    if (cond) {
        atomic_inc(&n_pass);
        printf("PASS %s\n", rule);
        return true;
    }
    atomic_inc(&n_fail);
    struct sink s = { 0 };
    print_lock();   /* one line, even with details */
    printf("FAIL %s", rule);
    if (fmt) {
        emit(&s, ' ');
        emit(&s, '(');
        vformat(&s, fmt, *ap);
        emit(&s, ')');
    }
    emit(&s, '\n');
    print_unlock();
    return false;
}

bool checkf(bool cond, const char *rule, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    bool r = vcheckf(cond, rule, fmt, &ap);
    va_end(ap);
    return r;
}

bool check(bool cond, const char *rule) { return vcheckf(cond, rule, NULL, NULL); }

void skip(const char *rule, const char *reason)
{
    atomic_inc(&n_skip);
    printf("SKIP %s (%s)\n", rule, reason);
}

uint32_t checks_failed(void) { return n_fail; }

void print_summary(void)
{
    print_lock();
    printf("SUMMARY: %u passed, %u failed", n_pass, n_fail);
    if (n_skip)
        printf(", %u skipped", n_skip);
    printf("\n");
    print_unlock();
}

void exit_with_summary(void)
{
    print_summary();
    debug_exit(n_fail ? 1 : 0);
}

void debug_exit(uint32_t value)
{
    outl(DEBUG_EXIT_PORT, value);
    for (;;)   /* no debug-exit device: stop here */
        __asm__ volatile("cli; hlt");
}
