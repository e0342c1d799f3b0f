/* A static probe run inside a step: tries one operation a sandboxed step must not be
 * able to do and reports what the kernel said.
 *
 *   probe OPERATION   prints "OPERATION blocked: <errno name>" and exits 0 when the
 *                     operation failed, "OPERATION ALLOWED" and exits 1 when it worked.
 *
 * Built by tests/support/images.py (gcc -static) into the sandbox test image.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static int report(const char *what, long rc) {
    if (rc == -1) {
        printf("%s blocked: %s\n", what, strerrorname_np(errno));
        return 0;
    }
    printf("%s ALLOWED\n", what);
    return 1;
}

static pid_t sleeper(void) {
    pid_t pid = fork();
    if (pid == 0) {
        /* a process that is not the prober's child: double fork, the parent exits */
        pause();
        _exit(0);
    }
    return pid;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: probe userns|clone_userns|mount|keyctl|add_key|bpf|"
                        "init_module|finit_module|delete_module|ptrace|ptrace_child|"
                        "process_vm_readv|setns|compat|reboot|swapon|io_uring|perf_event_open|"
                        "userfaultfd\n");
        return 2;
    }
    const char *op = argv[1];
    if (!strcmp(op, "userns")) return report(op, unshare(CLONE_NEWUSER));
    if (!strcmp(op, "mountns")) return report(op, unshare(CLONE_NEWNS));
    if (!strcmp(op, "clone_userns")) {
        long rc = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (rc == 0) _exit(0);
        if (rc > 0) waitpid((pid_t)rc, NULL, 0);
        return report(op, rc < 0 ? -1 : 0);
    }
    if (!strcmp(op, "mount")) return report(op, mount("none", "/tmp", "tmpfs", 0, NULL));
    if (!strcmp(op, "keyctl"))  /* KEYCTL_JOIN_SESSION_KEYRING */
        return report(op, syscall(SYS_keyctl, 1, "kata-probe"));
    if (!strcmp(op, "add_key"))
        return report(op, syscall(SYS_add_key, "user", "kata", "x", 1, -3 /* session */));
    if (!strcmp(op, "bpf")) {  /* BPF_MAP_CREATE with an empty attr */
        char attr[128] = {0};
        return report(op, syscall(SYS_bpf, 0, attr, sizeof attr));
    }
    if (!strcmp(op, "init_module")) return report(op, syscall(SYS_init_module, "", 0, ""));
    if (!strcmp(op, "finit_module")) {
        int fd = open("/proc/self/exe", O_RDONLY);
        return report(op, syscall(SYS_finit_module, fd, "", 0));
    }
    if (!strcmp(op, "delete_module")) return report(op, syscall(SYS_delete_module, "ext4", 0));
    if (!strcmp(op, "ptrace")) {  /* attach to another process: argv[2], else our parent */
        pid_t target = argc > 2 ? (pid_t)atoi(argv[2]) : getppid();
        long rc = ptrace(PTRACE_ATTACH, target, 0, 0);
        if (rc == 0) {  /* wait for the attach stop, then let it go */
            waitpid(target, NULL, __WALL);
            ptrace(PTRACE_DETACH, target, 0, 0);
        }
        return report(op, rc);
    }
    if (!strcmp(op, "ptrace_child")) {
        pid_t child = sleeper();
        long rc = ptrace(PTRACE_ATTACH, child, 0, 0);
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        return report(op, rc);
    }
    if (!strcmp(op, "process_vm_readv")) {
        char buf[8];
        struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
        pid_t target = argc > 2 ? (pid_t)atoi(argv[2]) : getppid();
        return report(op, process_vm_readv(target, &local, 1, &remote, 1, 0));
    }
    if (!strcmp(op, "setns")) {
        int fd = open("/proc/1/ns/mnt", O_RDONLY);
        return report(op, setns(fd, 0));
    }
    if (!strcmp(op, "compat")) {  /* getpid through the i386 ABI (int 0x80, eax = 20) */
        long rc;
        __asm__ volatile("int $0x80" : "=a"(rc) : "a"(20) : "memory");
        return report(op, rc < 0 ? (errno = (int)-rc, -1) : 0);
    }
    if (!strcmp(op, "reboot")) return report(op, syscall(SYS_reboot, 0xfee1dead, 672274793, 0, 0));
    if (!strcmp(op, "swapon")) return report(op, syscall(SYS_swapon, "/nonexistent", 0));
    if (!strcmp(op, "io_uring")) {  /* io_uring_setup(4, zeroed io_uring_params) */
        char params[120] = {0};
        long rc = syscall(SYS_io_uring_setup, 4, params);
        if (rc >= 0) close((int)rc);
        return report(op, rc < 0 ? -1 : 0);
    }
    if (!strcmp(op, "perf_event_open")) {  /* a software CPU clock counter of ourselves */
        unsigned int attr[32] = {0};
        attr[0] = 1;            /* type PERF_TYPE_SOFTWARE */
        attr[1] = sizeof attr;  /* size */
        long rc = syscall(SYS_perf_event_open, attr, 0, -1, -1, 0);
        if (rc >= 0) close((int)rc);
        return report(op, rc < 0 ? -1 : 0);
    }
    if (!strcmp(op, "userfaultfd")) {
        long rc = syscall(SYS_userfaultfd, 0);
        if (rc >= 0) close((int)rc);
        return report(op, rc < 0 ? -1 : 0);
    }
    fprintf(stderr, "probe: unknown operation %s\n", op);
    return 2;
}
