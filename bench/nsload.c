/*
 * nsload: the load generator and backend of netshield's side-by-side benchmark (bench/run.py).
 *
 * One single-threaded epoll program, so that neither end of the measured path is the
 * bottleneck (the benchmark prints the CPU share of both). Built by bench/run.py with
 * `gcc -O2 -o nsload nsload.c`.
 *
 *   nsload serve                          backend on 127.0.0.1:0; prints {"port": N}; runs until killed
 *   nsload bulk     HOST PORT CONNS SECS  upload for SECS on CONNS connections
 *   nsload pingpong HOST PORT CONNS SECS SIZE   SIZE-byte request, SIZE-byte echo, repeat
 *   nsload connect  HOST PORT CONC  SECS SIZE   a new connection per request, CONC at a time
 *   nsload hold     HOST PORT CONNS       open CONNS (one round trip each, 32 at a time), print {"held": N},
 *                                         keep them open until standard input closes
 *
 * Backend protocol: a connection whose first byte is 'U' is an upload: the backend counts the
 * bytes until EOF and answers "<count>\n". Any other connection is echoed byte for byte; EOF
 * is answered with EOF. Each load mode prints one JSON object on stdout: counts, rates,
 * latency percentiles (microseconds), errors, and its own CPU seconds (getrusage).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF (256 * 1024)
#define MAXEV 256
#define HOLD_BATCH 32

static char scratch[BUF];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    fprintf(stderr, "nsload: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static struct sockaddr_in target;

static int start_connect(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    nodelay(fd);
    if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static int blocking_connect(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    nodelay(fd);
    if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0) die("connect");
    return fd;
}

/* write all of buf on a blocking socket */
static int write_all(int fd, const char *buf, size_t n) {
    while (n) {
        ssize_t w = write(fd, buf, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_exact(int fd, char *buf, size_t n) {
    while (n) {
        ssize_t r = read(fd, buf, n);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) continue;
            return -1;
        }
        buf += r;
        n -= (size_t)r;
    }
    return 0;
}

/* --- latency samples ------------------------------------------------------------------------ */

typedef struct {
    double *v;
    size_t n, cap;
} samples;

static void add_sample(samples *s, double x) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 65536;
        s->v = realloc(s->v, s->cap * sizeof(double));
        if (!s->v) die("realloc");
    }
    s->v[s->n++] = x;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(samples *s, double p) {
    if (!s->n) return 0;
    size_t i = (size_t)(p * (double)(s->n - 1) + 0.5);
    return s->v[i] * 1e6;
}

static void print_latency(samples *s) {
    qsort(s->v, s->n, sizeof(double), cmp_double);
    printf("\"p50_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f", percentile(s, 0.5),
           percentile(s, 0.99), s->n ? s->v[s->n - 1] * 1e6 : 0.0);
}

/* --- backend --------------------------------------------------------------------------------- */

typedef struct {
    int fd;
    int mode; /* 0: first byte not seen, 1: echo, 2: upload */
    uint64_t count;
    char *pend; /* echo bytes not yet written */
    size_t plen, poff;
    int eof;
} bconn;

static void bclose(int ep, bconn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pend);
    free(c);
}

/* flush pending echo bytes; returns 0 when all written, 1 if blocked, -1 on error */
static int bflush(bconn *c) {
    while (c->poff < c->plen) {
        ssize_t w = write(c->fd, c->pend + c->poff, c->plen - c->poff);
        if (w < 0) return (errno == EAGAIN) ? 1 : -1;
        c->poff += (size_t)w;
    }
    c->plen = c->poff = 0;
    return 0;
}

static void bwant(int ep, bconn *c, int out) {
    struct epoll_event ev = {.events = out ? EPOLLOUT : EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void backend_event(int ep, bconn *c, uint32_t events) {
    if (c->plen) { /* blocked echo: only EPOLLOUT is armed */
        int f = bflush(c);
        if (f < 0) return bclose(ep, c);
        if (f > 0) return;
        if (c->eof) {
            shutdown(c->fd, SHUT_WR);
            return bclose(ep, c);
        }
        bwant(ep, c, 0);
        return;
    }
    (void)events;
    for (;;) {
        ssize_t r = read(c->fd, scratch, BUF);
        if (r < 0) {
            if (errno == EAGAIN) return;
            return bclose(ep, c);
        }
        if (r == 0) {
            if (c->mode == 2) {
                char line[32];
                int n = snprintf(line, sizeof line, "%llu\n", (unsigned long long)c->count);
                if (write(c->fd, line, (size_t)n) < 0) { /* the peer went away */ }
            }
            shutdown(c->fd, SHUT_WR);
            return bclose(ep, c);
        }
        char *data = scratch;
        size_t n = (size_t)r;
        if (c->mode == 0) c->mode = (data[0] == 'U') ? 2 : 1;
        if (c->mode == 2) {
            c->count += n;
            continue;
        }
        ssize_t w = write(c->fd, data, n);
        if (w < 0) {
            if (errno != EAGAIN) return bclose(ep, c);
            w = 0;
        }
        if ((size_t)w < n) {
            c->pend = realloc(c->pend, n - (size_t)w);
            memcpy(c->pend, data + w, n - (size_t)w);
            c->plen = n - (size_t)w;
            c->poff = 0;
            bwant(ep, c, 1);
            return;
        }
    }
}

static int serve(void) {
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) die("listen");
    socklen_t len = sizeof a;
    getsockname(ls, (struct sockaddr *)&a, &len);
    printf("{\"port\": %d}\n", ntohs(a.sin_port));
    fflush(stdout);
    nonblock(ls);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev);
    struct epoll_event evs[MAXEV];
    for (;;) {
        int n = epoll_wait(ep, evs, MAXEV, -1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    nodelay(fd);
                    bconn *c = calloc(1, sizeof *c);
                    c->fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
            } else {
                backend_event(ep, evs[i].data.ptr, evs[i].events);
            }
        }
    }
    return 0;
}

/* --- bulk upload ------------------------------------------------------------------------------ */

typedef struct {
    int fd;
    int phase; /* 0 sending, 1 waiting for the count, 2 done */
    uint64_t sent, counted;
    char reply[32];
    size_t rlen;
} uconn;

static int bulk(int conns, double secs) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    uconn *cs = calloc((size_t)conns, sizeof *cs);
    memset(scratch, 'x', BUF);
    scratch[0] = 'U';
    double t0 = now(), cpu0 = cpu_seconds(), t_end = 0;
    int errors = 0, active = conns;
    for (int i = 0; i < conns; i++) {
        cs[i].fd = blocking_connect();
        if (write_all(cs[i].fd, "U", 1) < 0) die("write");
        cs[i].sent = 1;
        nonblock(cs[i].fd);
        struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    scratch[0] = 'x';
    struct epoll_event evs[MAXEV];
    double deadline = t0 + secs;
    while (active > 0) {
        int n = epoll_wait(ep, evs, MAXEV, 100);
        double t = now();
        for (int i = 0; i < n; i++) {
            uconn *c = evs[i].data.ptr;
            if (c->phase == 0) {
                if (t >= deadline) {
                    shutdown(c->fd, SHUT_WR);
                    c->phase = 1;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                    continue;
                }
                ssize_t w = write(c->fd, scratch, BUF);
                if (w > 0) c->sent += (uint64_t)w;
                else if (w < 0 && errno != EAGAIN) {
                    errors++, c->phase = 2, active--;
                    close(c->fd);
                }
            } else if (c->phase == 1) {
                ssize_t r = read(c->fd, c->reply + c->rlen, sizeof c->reply - 1 - c->rlen);
                if (r > 0) {
                    c->rlen += (size_t)r;
                    continue;
                }
                if (r < 0 && errno == EAGAIN) continue;
                c->reply[c->rlen] = 0;
                c->counted = strtoull(c->reply, NULL, 10);
                if (r < 0 || c->counted != c->sent) errors++;
                c->phase = 2, active--;
                t_end = now();
                close(c->fd);
            }
        }
        if (n == 0 && t >= deadline) { /* nothing writable: move everyone to the reply phase */
            for (int i = 0; i < conns; i++)
                if (cs[i].phase == 0) {
                    shutdown(cs[i].fd, SHUT_WR);
                    cs[i].phase = 1;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
                    epoll_ctl(ep, EPOLL_CTL_MOD, cs[i].fd, &ev);
                }
        }
        if (t > deadline + 60) break; /* hang guard */
    }
    uint64_t total = 0;
    for (int i = 0; i < conns; i++) total += cs[i].counted;
    double elapsed = (t_end > t0 ? t_end : now()) - t0;
    printf("{\"mode\": \"bulk\", \"conns\": %d, \"bytes\": %llu, \"seconds\": %.4f, "
           "\"mb_per_s\": %.2f, \"errors\": %d, \"cpu_s\": %.4f}\n",
           conns, (unsigned long long)total, elapsed, total / elapsed / 1e6, errors + active,
           cpu_seconds() - cpu0);
    return 0;
}

/* --- ping-pong ---------------------------------------------------------------------------------- */

typedef struct {
    int fd;
    size_t got;
    double sent_at;
} pconn;

static int pingpong(int conns, double secs, size_t size) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    pconn *cs = calloc((size_t)conns, sizeof *cs);
    char *req = malloc(size);
    memset(req, 'p', size);
    for (int i = 0; i < conns; i++) { /* connect and warm up: one round trip each, untimed */
        cs[i].fd = blocking_connect();
        if (write_all(cs[i].fd, req, size) < 0 || read_exact(cs[i].fd, scratch, size) < 0)
            die("warm-up round trip");
        nonblock(cs[i].fd);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    samples lat = {0};
    int errors = 0, active = conns;
    double t0 = now(), cpu0 = cpu_seconds(), deadline = t0 + secs;
    for (int i = 0; i < conns; i++) {
        cs[i].sent_at = now();
        if (write(cs[i].fd, req, size) != (ssize_t)size) errors++;
    }
    struct epoll_event evs[MAXEV];
    double t = t0;
    while (active > 0 && t < deadline) {
        int n = epoll_wait(ep, evs, MAXEV, 100);
        t = now();
        for (int i = 0; i < n; i++) {
            pconn *c = evs[i].data.ptr;
            ssize_t r = read(c->fd, scratch, BUF);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                errors++, active--;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            c->got += (size_t)r;
            if (c->got < size) continue;
            c->got -= size;
            add_sample(&lat, t - c->sent_at);
            if (t < deadline) {
                c->sent_at = t;
                if (write(c->fd, req, size) != (ssize_t)size) errors++;
            }
        }
    }
    double elapsed = now() - t0, cpu = cpu_seconds() - cpu0;
    for (int i = 0; i < conns; i++) close(cs[i].fd);
    printf("{\"mode\": \"pingpong\", \"conns\": %d, \"size\": %zu, \"requests\": %zu, "
           "\"seconds\": %.4f, \"rps\": %.1f, ",
           conns, size, lat.n, elapsed, lat.n / elapsed);
    print_latency(&lat);
    printf(", \"errors\": %d, \"cpu_s\": %.4f}\n", errors, cpu);
    return 0;
}

/* --- a new connection per request ----------------------------------------------------------- */

typedef struct {
    int fd;
    int connected;
    size_t got;
    double started;
} cconn;

static int open_slot(int ep, cconn *c) {
    c->fd = start_connect();
    c->connected = 0;
    c->got = 0;
    c->started = now();
    if (c->fd < 0) return -1;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

static int connect_mode(int conc, double secs, size_t size) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    cconn *cs = calloc((size_t)conc, sizeof *cs);
    char *req = malloc(size);
    memset(req, 'c', size);
    samples lat = {0};
    int errors = 0, active = 0;
    double t0 = now(), cpu0 = cpu_seconds(), deadline = t0 + secs;
    for (int i = 0; i < conc; i++)
        if (open_slot(ep, &cs[i]) == 0) active++;
        else errors++;
    struct epoll_event evs[MAXEV];
    while (active > 0) {
        int n = epoll_wait(ep, evs, MAXEV, 100);
        double t = now();
        for (int i = 0; i < n; i++) {
            cconn *c = evs[i].data.ptr;
            int done = 0, failed = 0;
            if (!c->connected) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err || write(c->fd, req, size) != (ssize_t)size) failed = 1;
                else {
                    c->connected = 1;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            } else {
                ssize_t r = read(c->fd, scratch, BUF);
                if (r < 0 && errno == EAGAIN) continue;
                if (r <= 0) failed = 1;
                else if ((c->got += (size_t)r) >= size) done = 1;
            }
            if (done || failed) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                active--;
                if (failed) errors++;
                else add_sample(&lat, t - c->started);
                if (t < deadline) {
                    if (open_slot(ep, c) == 0) active++;
                    else errors++;
                }
            }
        }
        if (t > deadline + 30) break; /* hang guard */
    }
    double elapsed = now() - t0, cpu = cpu_seconds() - cpu0;
    printf("{\"mode\": \"connect\", \"concurrency\": %d, \"size\": %zu, \"connections\": %zu, "
           "\"seconds\": %.4f, \"cps\": %.1f, ",
           conc, size, lat.n, elapsed, lat.n / elapsed);
    print_latency(&lat);
    printf(", \"errors\": %d, \"cpu_s\": %.4f}\n", errors + active, cpu);
    return 0;
}

/* --- hold idle connections ---------------------------------------------------------------------- */

static int hold(int conns) {
    int *fds = calloc((size_t)conns, sizeof(int));
    int ok = 0;
    /* HOLD_BATCH connections at a time: the proxies' handshakes overlap, as with many clients */
    for (int start = 0; start < conns; start += HOLD_BATCH) {
        int end = start + HOLD_BATCH < conns ? start + HOLD_BATCH : conns;
        int sent[HOLD_BATCH];
        for (int i = start; i < end; i++) {
            fds[i] = blocking_connect();
            sent[i - start] = write_all(fds[i], "h", 1) == 0;
        }
        for (int i = start; i < end; i++)
            if (sent[i - start] && read_exact(fds[i], scratch, 1) == 0) ok++;
    }
    printf("{\"mode\": \"hold\", \"held\": %d, \"errors\": %d}\n", ok, conns - ok);
    fflush(stdout);
    while (read(0, scratch, BUF) > 0) {
    }
    for (int i = 0; i < conns; i++) close(fds[i]);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 2 && !strcmp(argv[1], "serve")) return serve();
    if (argc < 5) {
        fprintf(stderr, "usage: nsload serve | bulk|pingpong|connect|hold HOST PORT N [SECS SIZE]\n");
        return 2;
    }
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &target.sin_addr) != 1) {
        fprintf(stderr, "nsload: %s is not an IPv4 address\n", argv[2]);
        return 2;
    }
    int n = atoi(argv[4]);
    double secs = argc > 5 ? atof(argv[5]) : 1.0;
    size_t size = argc > 6 ? (size_t)atol(argv[6]) : 64;
    if (!strcmp(argv[1], "bulk")) return bulk(n, secs);
    if (!strcmp(argv[1], "pingpong")) return pingpong(n, secs, size);
    if (!strcmp(argv[1], "connect")) return connect_mode(n, secs, size);
    if (!strcmp(argv[1], "hold")) return hold(n);
    fprintf(stderr, "nsload: unknown mode %s\n", argv[1]);
    return 2;
}
