//! The upstream `KubeletConfiguration` fields krustlet cannot honour, each with why; and
//! those it honours at one value only.

/// Why a field is not honoured, by kind of field.
const CGROUPS: &str = "wasm pods run inside krustlet's process, not in cgroups of their own; \
                       their CPU and memory limits are enforced by the wasm runtime";
const RESERVED: &str = "krustlet reserves by --system-reserved and --kube-reserved only, \
                        with no NUMA placement or exclusive CPUs";
const CPU_PLACEMENT: &str = "wasm pods get no exclusive CPUs, NUMA or memory placement";
const NO_PROCESSES: &str = "wasm pods are not processes: there are no PIDs, swap, OOM scores, \
                            sysctls or seccomp profiles to set";
const NO_CRI: &str = "the wasm runtime is built in; there is no CRI endpoint";
const NETWORK: &str = "krustlet programs no iptables rules; a pod's network is its CNI plugins'";
const HANDLERS: &str = "krustlet serves no profiling, debugging flag or system log handlers";
const LOGGING: &str = "krustlet's own logging is set by RUST_LOG";
const NOT_IMPLEMENTED: &str = "not implemented by krustlet";
const VOLUMES: &str = "krustlet mounts no volume plugins (no flexvolume, no attach/detach)";
const TLS: &str = "the kubelet API's TLS versions and cipher suites are rustls' safe defaults";

/// Fields a wasm node cannot honour, and why (dotted paths for nested fields).
pub const UNSUPPORTED: &[(&str, &str)] = &[
    ("cgroupDriver", CGROUPS),
    ("cgroupRoot", CGROUPS),
    ("cgroupsPerQOS", CGROUPS),
    ("kubeletCgroups", CGROUPS),
    ("systemCgroups", CGROUPS),
    ("systemReservedCgroup", CGROUPS),
    ("kubeReservedCgroup", CGROUPS),
    ("enforceNodeAllocatable", CGROUPS),
    ("failCgroupV1", CGROUPS),
    ("memoryThrottlingFactor", CGROUPS),
    ("qosReserved", CGROUPS),
    ("reservedMemory", RESERVED),
    ("reservedSystemCPUs", RESERVED),
    ("cpuManagerPolicy", CPU_PLACEMENT),
    ("cpuManagerPolicyOptions", CPU_PLACEMENT),
    ("cpuManagerReconcilePeriod", CPU_PLACEMENT),
    ("memoryManagerPolicy", CPU_PLACEMENT),
    ("topologyManagerPolicy", CPU_PLACEMENT),
    ("topologyManagerScope", CPU_PLACEMENT),
    ("topologyManagerPolicyOptions", CPU_PLACEMENT),
    ("singleProcessOOMKill", NO_PROCESSES),
    ("podPidsLimit", NO_PROCESSES),
    ("memorySwap", NO_PROCESSES),
    ("oomScoreAdj", NO_PROCESSES),
    ("kernelMemcgNotification", NO_PROCESSES),
    ("protectKernelDefaults", NO_PROCESSES),
    ("allowedUnsafeSysctls", NO_PROCESSES),
    ("seccompDefault", NO_PROCESSES),
    ("userNamespaces", NO_PROCESSES),
    ("containerRuntimeEndpoint", NO_CRI),
    ("imageServiceEndpoint", NO_CRI),
    ("runtimeRequestTimeout", NO_CRI),
    ("hairpinMode", NETWORK),
    ("makeIPTablesUtilChains", NETWORK),
    ("iptablesMasqueradeBit", NETWORK),
    ("iptablesDropBit", NETWORK),
    ("podCIDR", NETWORK),
    ("enableDebuggingHandlers", HANDLERS),
    ("enableContentionProfiling", HANDLERS),
    ("enableProfilingHandler", HANDLERS),
    ("enableDebugFlagsHandler", HANDLERS),
    ("enableSystemLogHandler", HANDLERS),
    ("enableSystemLogQuery", HANDLERS),
    (
        "healthzPort",
        "/healthz is served on the kubelet API's port only",
    ),
    (
        "healthzBindAddress",
        "/healthz is served on the kubelet API's port only",
    ),
    ("logging", LOGGING),
    ("tracing", NOT_IMPLEMENTED),
    ("featureGates", "krustlet has no feature gates"),
    ("showHiddenMetricsForVersion", NOT_IMPLEMENTED),
    ("volumePluginDir", VOLUMES),
    ("enableControllerAttachDetach", VOLUMES),
    ("tlsCipherSuites", TLS),
    ("tlsMinVersion", TLS),
    ("staticPodURL", NOT_IMPLEMENTED),
    ("staticPodURLHeader", NOT_IMPLEMENTED),
    ("httpCheckFrequency", NOT_IMPLEMENTED),
    (
        "podLogsDir",
        "pod logs are kept under the data dir (DATA_DIR/pods)",
    ),
    ("providerID", NOT_IMPLEMENTED),
    ("registryPullQPS", NOT_IMPLEMENTED),
    ("registryBurst", NOT_IMPLEMENTED),
    ("maxParallelImagePulls", NOT_IMPLEMENTED),
    ("imageMaximumGCAge", NOT_IMPLEMENTED),
    ("imagePullCredentialsVerificationPolicy", NOT_IMPLEMENTED),
    ("preloadedImagesVerificationAllowlist", NOT_IMPLEMENTED),
    ("nodeStatusMaxImages", NOT_IMPLEMENTED),
    (
        "maxOpenFiles",
        "krustlet raises its open file limit to the hard limit",
    ),
    ("contentType", NOT_IMPLEMENTED),
    ("kubeAPIQPS", NOT_IMPLEMENTED),
    ("kubeAPIBurst", NOT_IMPLEMENTED),
    ("evictionSoft", NOT_IMPLEMENTED),
    ("evictionSoftGracePeriod", NOT_IMPLEMENTED),
    ("evictionMaxPodGracePeriod", NOT_IMPLEMENTED),
    ("evictionMinimumReclaim", NOT_IMPLEMENTED),
    ("mergeDefaultEvictionSettings", NOT_IMPLEMENTED),
    ("podsPerCore", NOT_IMPLEMENTED),
    (
        "streamingConnectionIdleTimeout",
        "exec and attach are not served",
    ),
    ("volumeStatsAggPeriod", NOT_IMPLEMENTED),
    (
        "configMapAndSecretChangeDetectionStrategy",
        "ConfigMaps and Secrets are read again at each syncFrequency",
    ),
    (
        "shutdownGracePeriodByPodPriority",
        "use shutdownGracePeriod and shutdownGracePeriodCriticalPods",
    ),
    ("crashLoopBackOff", NOT_IMPLEMENTED),
    (
        "localStorageCapacityIsolation",
        "emptyDir sizeLimit and ephemeral storage are always accounted",
    ),
    ("containerLogMaxWorkers", NOT_IMPLEMENTED),
    ("containerLogMonitorInterval", NOT_IMPLEMENTED),
    ("runOnce", NOT_IMPLEMENTED),
];

/// Fields krustlet honours at one value only (what it always does): any other value
/// warns. The value as YAML, and why.
pub const FIXED: &[(&str, &str, &str)] = &[
    ("enableServer", "true", "the kubelet API is always served"),
    ("registerNode", "true", "the node always registers itself"),
    ("readOnlyPort", "0", "krustlet serves no read-only port"),
    ("failSwapOn", "false", "krustlet does not check for swap"),
    (
        "serializeImagePulls",
        "false",
        "images are pulled in parallel",
    ),
    ("cpuCFSQuota", "true", "CPU limits are always enforced"),
    (
        "cpuCFSQuotaPeriod",
        "100ms",
        "CPU limits are enforced over 100ms periods",
    ),
];
