namespace JobRunner;

/// <summary>The bounds of <see cref="ContainerSpec"/>, as users of self-service job platforms know them.</summary>
internal static class ContainerSpecValidator
{
    public const int MinCpu = 256;
    public const int MaxCpu = 60_000;
    public const int MaxCpuWithGpu = 94_000;
    public const int MinMemory = 512;
    public const int MaxMemory = 350_000;
    public const int MaxMemoryWithGpu = 376_000;
    public const int MaxEphemeralStorage = 5_000;

    public static IReadOnlyList<string> Validate(ContainerSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var errors = new List<string>();
        if (string.IsNullOrWhiteSpace(spec.Image))
        {
            errors.Add("Image is empty. Set it to the image to run, e.g. \"alpine:3.20\".");
        }

        if (spec.Command is null || spec.Args is null || spec.Env is null || spec.Resources is null || spec.NodeSelector is null || spec.Tolerations is null)
        {
            errors.Add("Command, Args, Env, Resources, NodeSelector and Tolerations must not be null. Leave them unset for the defaults.");
            return errors;
        }

        if (spec.Command.Count == 0 && spec.Args.Count == 0)
        {
            errors.Add("Command is empty. Set it to the executable and its arguments as an array, e.g. [\"/bin/echo\", \"hello\"].");
        }
        else if (spec.Command.Count > 0 && string.IsNullOrWhiteSpace(spec.Command[0]))
        {
            errors.Add("Command[0] is empty. Set it to the executable to run.");
        }

        var r = spec.Resources;
        var gpu = r.Gpus > 0;
        var maxCpu = gpu ? MaxCpuWithGpu : MaxCpu;
        var maxMemory = gpu ? MaxMemoryWithGpu : MaxMemory;
        if (r.CpuMillicores < MinCpu || r.CpuMillicores > maxCpu)
        {
            errors.Add($"Resources.CpuMillicores is {r.CpuMillicores}. Use {MinCpu}–{maxCpu:N0} millicores{(gpu ? " (with a GPU)" : $", or up to {MaxCpuWithGpu:N0} with a GPU")}.");
        }

        if (r.MemoryMb < MinMemory || r.MemoryMb > maxMemory)
        {
            errors.Add($"Resources.MemoryMb is {r.MemoryMb}. Use {MinMemory}–{maxMemory:N0} MB{(gpu ? " (with a GPU)" : $", or up to {MaxMemoryWithGpu:N0} with a GPU")}.");
        }

        if (r.EphemeralStorageMb is { } storage && (storage < 0 || storage > MaxEphemeralStorage))
        {
            errors.Add($"Resources.EphemeralStorageMb is {storage}. Use 0–{MaxEphemeralStorage:N0} MB, or leave it unset.");
        }

        if (r.Gpus < 0)
        {
            errors.Add($"Resources.Gpus is {r.Gpus}. Use 0 or more.");
        }

        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var env in spec.Env)
        {
            if (env is null || !IsEnvName(env.Name))
            {
                errors.Add($"Environment variable name '{env?.Name}' is not valid. Use letters, digits and '_', not starting with a digit.");
            }
            else if (!names.Add(env.Name))
            {
                errors.Add($"Environment variable '{env.Name}' is set more than once. Set each name once.");
            }
            else if (env.Value is null)
            {
                errors.Add($"Environment variable '{env.Name}' has a null value. Use an empty string instead.");
            }
        }

        if (spec.Timeout is { } timeout && timeout <= TimeSpan.Zero)
        {
            errors.Add($"Timeout is {timeout}. Set a positive time, or leave it unset for none.");
        }

        foreach (var t in spec.Tolerations)
        {
            if (t is null || (t.Operator == TolerationOperator.Equal && string.IsNullOrEmpty(t.Key)))
            {
                errors.Add("A toleration with the Equal operator needs a Key. Set Key, or use the Exists operator.");
            }
        }

        return errors;
    }

    private static bool IsEnvName(string? name)
    {
        if (string.IsNullOrEmpty(name) || char.IsAsciiDigit(name[0]))
        {
            return false;
        }

        foreach (var c in name)
        {
            if (!char.IsAsciiLetterOrDigit(c) && c != '_')
            {
                return false;
            }
        }

        return true;
    }
}
