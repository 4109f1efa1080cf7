using System.Runtime.InteropServices;

namespace JobRunner.Engines.Process;

/// <summary>
/// Signals to a whole process group. The engine starts every child through <c>setsid</c>, so the child leads its own
/// group and its descendants share it: one signal reaches the whole tree.
/// </summary>
internal static partial class ProcessGroup
{
    public const int SigTerm = 15;
    public const int SigKill = 9;
    public const string SetsidPath = "/usr/bin/setsid";

    public static bool IsSupported { get; } = (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()) && File.Exists(SetsidPath);

    /// <summary>Sends <paramref name="signal"/> to the group led by <paramref name="pid"/>; a group that is gone is ignored.</summary>
    public static void Signal(int pid, int signal)
    {
        if (IsSupported && pid > 0)
        {
            _ = Kill(-pid, signal);
        }
    }

    /// <summary>Sends <paramref name="signal"/> to one process; a process that is gone is ignored.</summary>
    public static void SignalProcess(int pid, int signal)
    {
        if ((OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()) && pid > 0)
        {
            _ = Kill(pid, signal);
        }
    }

    /// <summary>Sends <paramref name="signal"/> to the group led by <paramref name="pid"/>, or to that process alone.</summary>
    public static void Send(int pid, int signal, bool group)
    {
        if (group)
        {
            Signal(pid, signal);
        }
        else
        {
            SignalProcess(pid, signal);
        }
    }

    public static string SignalName(int signal) => signal switch
    {
        1 => "SIGHUP",
        2 => "SIGINT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "signal " + signal,
    };

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);
}
