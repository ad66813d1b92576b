/*
 * libsrtp_bench: libsrtp2 (built with --enable-openssl by scripts/bench-libsrtp) protecting and
 * unprotecting the same 172-byte RTP packet with the same master key as benches/srtp_bench.rs,
 * so that srtp_bench can print libsrtp2+OpenSSL next to sbc's path and the crypto floor.
 *
 * Output, one line per figure (read by srtp_bench, keep the format):
 *   first <suite> <hex of the SRTP packet for seq 1>   (srtp_bench checks it is byte-identical)
 *   ns <suite> protect|unprotect <median thread-CPU ns/packet over RUNS runs>
 *
 * The packet is what srtp_bench's plain(seq) writes: V=2, PT 0, seq, ts = seq*160,
 * SSRC 0x12345678, 160 bytes of 0x55. Master key 16 x 0x42, master salt 14 x 0x24.
 * Usage: libsrtp-bench [budget_ms]   (per figure, split in 5 runs; prints the median run)
 */
#include <srtp2/srtp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PAYLOAD 160
#define HDR 12
#define PLAIN_LEN (HDR + PAYLOAD)
#define SLOT (PLAIN_LEN + SRTP_MAX_TRAILER_LEN)
#define RUNS 5
#define BATCH 16384 /* pre-protected packets per receiving session */

static void die(const char *what, int err) {
    fprintf(stderr, "libsrtp-bench: %s failed: %d\n", what, err);
    exit(1);
}

/* Thread CPU time, as srtp_bench measures (time other processes hold the core is not counted). */
static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static void plain(uint8_t *p, uint16_t seq) {
    uint32_t ts = (uint32_t)seq * 160u;
    p[0] = 0x80;
    p[1] = 0;
    p[2] = (uint8_t)(seq >> 8);
    p[3] = (uint8_t)seq;
    p[4] = (uint8_t)(ts >> 24);
    p[5] = (uint8_t)(ts >> 16);
    p[6] = (uint8_t)(ts >> 8);
    p[7] = (uint8_t)ts;
    p[8] = 0x12;
    p[9] = 0x34;
    p[10] = 0x56;
    p[11] = 0x78;
    memset(p + HDR, 0x55, PAYLOAD);
}

static srtp_t session(int tag80, int inbound) {
    static uint8_t key[30];
    memset(key, 0x42, 16);
    memset(key + 16, 0x24, 14);
    srtp_policy_t policy;
    memset(&policy, 0, sizeof policy);
    if (tag80)
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&policy.rtp);
    else
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32(&policy.rtp);
    srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&policy.rtcp);
    policy.ssrc.type = inbound ? ssrc_any_inbound : ssrc_any_outbound;
    policy.key = key;
    policy.window_size = 128;
    policy.next = NULL;
    srtp_t s;
    int err = srtp_create(&s, &policy);
    if (err)
        die("srtp_create", err);
    return s;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ns per protect: build the plain packet (as srtp_bench does), protect in place. */
static double protect_run(int tag80, double budget) {
    srtp_t tx = session(tag80, 0);
    uint8_t buf[SLOT];
    uint64_t n = 0;
    double t0 = now_ns(), t = t0;
    while (t - t0 < budget) {
        for (int i = 0; i < 1024; i++, n++) {
            int len = PLAIN_LEN;
            plain(buf, (uint16_t)n);
            int err = srtp_protect(tx, buf, &len);
            if (err)
                die("srtp_protect", err);
        }
        t = now_ns();
    }
    srtp_dealloc(tx);
    return (t - t0) / (double)n;
}

/* ns per unprotect of fresh packets in sequence order (the replay window refuses repeats);
 * a packet is copied into the work buffer first, as libsrtp works in place. */
static double unprotect_run(int tag80, double budget, uint8_t *pkts, int *lens) {
    srtp_t tx = session(tag80, 0);
    for (int i = 0; i < BATCH; i++) {
        plain(pkts + (size_t)i * SLOT, (uint16_t)i);
        lens[i] = PLAIN_LEN;
        int err = srtp_protect(tx, pkts + (size_t)i * SLOT, &lens[i]);
        if (err)
            die("srtp_protect", err);
    }
    srtp_dealloc(tx);
    uint8_t buf[SLOT];
    uint64_t n = 0;
    double spent = 0;
    while (spent < budget) {
        srtp_t rx = session(tag80, 1);
        double t0 = now_ns();
        for (int i = 0; i < BATCH; i++, n++) {
            int len = lens[i];
            memcpy(buf, pkts + (size_t)i * SLOT, (size_t)len);
            int err = srtp_unprotect(rx, buf, &len);
            if (err)
                die("srtp_unprotect", err);
            if ((i & 255) == 255 && now_ns() - t0 + spent >= budget) {
                n++;
                break;
            }
        }
        spent += now_ns() - t0;
        srtp_dealloc(rx);
    }
    return spent / (double)n;
}

int main(int argc, char **argv) {
    double budget = 1e6 * (argc > 1 ? atof(argv[1]) : 300.0);
    int err = srtp_init();
    if (err)
        die("srtp_init", err);
    uint8_t *pkts = malloc((size_t)BATCH * SLOT);
    int *lens = malloc(sizeof(int) * BATCH);
    if (!pkts || !lens)
        die("malloc", 0);
    for (int tag80 = 1; tag80 >= 0; tag80--) {
        const char *suite = tag80 ? "80" : "32";
        srtp_t tx = session(tag80, 0);
        uint8_t buf[SLOT];
        int len = PLAIN_LEN;
        plain(buf, 1);
        err = srtp_protect(tx, buf, &len);
        if (err)
            die("srtp_protect", err);
        srtp_dealloc(tx);
        printf("first %s ", suite);
        for (int i = 0; i < len; i++)
            printf("%02x", buf[i]);
        printf("\n");
        double pr[RUNS], un[RUNS];
        for (int r = 0; r < RUNS; r++) {
            pr[r] = protect_run(tag80, budget / RUNS);
            un[r] = unprotect_run(tag80, budget / RUNS, pkts, lens);
        }
        qsort(pr, RUNS, sizeof(double), cmp);
        qsort(un, RUNS, sizeof(double), cmp);
        printf("ns %s protect %.1f\n", suite, pr[RUNS / 2]);
        printf("ns %s unprotect %.1f\n", suite, un[RUNS / 2]);
        fflush(stdout);
    }
    free(pkts);
    free(lens);
    srtp_shutdown();
    return 0;
}
