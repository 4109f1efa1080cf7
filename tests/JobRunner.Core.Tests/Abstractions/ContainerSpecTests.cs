namespace JobRunner.Tests.Abstractions;

public sealed class ContainerSpecTests
{
    private static ContainerSpec Valid(ContainerResources? resources = null) => new()
    {
        Image = "alpine:3.20",
        Command = ["/bin/echo", "hi"],
        Resources = resources ?? new ContainerResources(),
    };

    [Fact]
    public void Ctor_Defaults()
    {
        var spec = Valid();

        Assert.Equal((1000, 1024, null, 0), (spec.Resources.CpuMillicores, spec.Resources.MemoryMb, spec.Resources.EphemeralStorageMb, spec.Resources.Gpus));
        Assert.Equal(Lifecycle.OnDemand, spec.Lifecycle);
        Assert.Empty(spec.Validate());
    }

    [Theory]
    [InlineData(256, 512, 0, null)]
    [InlineData(60_000, 350_000, 0, 5_000)]
    [InlineData(94_000, 376_000, 1, 0)]
    public void Validate_WithinBounds_IsValid(int cpu, int memory, int gpus, int? storage)
    {
        Assert.Empty(Valid(new ContainerResources { CpuMillicores = cpu, MemoryMb = memory, Gpus = gpus, EphemeralStorageMb = storage }).Validate());
    }

    [Theory]
    [InlineData(255, 1024, 0, null, "CpuMillicores is 255")]
    [InlineData(60_001, 1024, 0, null, "CpuMillicores is 60001")]
    [InlineData(94_001, 1024, 1, null, "CpuMillicores is 94001")]
    [InlineData(1000, 511, 0, null, "MemoryMb is 511")]
    [InlineData(1000, 350_001, 0, null, "MemoryMb is 350001")]
    [InlineData(1000, 376_001, 2, null, "MemoryMb is 376001")]
    [InlineData(1000, 1024, 0, 5_001, "EphemeralStorageMb is 5001")]
    [InlineData(1000, 1024, -1, null, "Gpus is -1")]
    public void Validate_OutOfBounds_NamesTheBound(int cpu, int memory, int gpus, int? storage, string expected)
    {
        var errors = Valid(new ContainerResources { CpuMillicores = cpu, MemoryMb = memory, Gpus = gpus, EphemeralStorageMb = storage }).Validate();

        Assert.Contains(errors, e => e.Contains(expected, StringComparison.Ordinal));
    }

    [Fact]
    public void Validate_CpuAboveLimitWithoutGpu_SuggestsTheGpuLimit()
    {
        var error = Assert.Single(Valid(new ContainerResources { CpuMillicores = 70_000 }).Validate());

        Assert.Contains("Use 256–60,000 millicores, or up to 94,000 with a GPU", error, StringComparison.Ordinal);
    }

    [Fact]
    public void ThrowIfInvalid_EveryProblem_InOneException()
    {
        var spec = Valid(new ContainerResources { CpuMillicores = 1, MemoryMb = 1, EphemeralStorageMb = 9_999 }) with
        {
            Image = "",
            Command = [],
            Env = [new EnvVar("1BAD", "x"), new EnvVar("GOOD", "a"), new EnvVar("GOOD", "b"), new EnvVar("has-dash", "x")],
            Timeout = TimeSpan.Zero,
        };

        var e = Assert.Throws<JobValidationException>(spec.ThrowIfInvalid);

        Assert.Equal(9, e.Errors.Count);
        Assert.Contains(e.Errors, x => x.Contains("'1BAD' is not valid", StringComparison.Ordinal));
        Assert.Contains(e.Errors, x => x.Contains("'GOOD' is set more than once", StringComparison.Ordinal));
        Assert.Contains(e.Errors, x => x.Contains("'has-dash' is not valid", StringComparison.Ordinal));
        Assert.Contains(e.Errors, x => x.Contains("Image is empty", StringComparison.Ordinal));
        Assert.Contains(e.Errors, x => x.Contains("Command is empty", StringComparison.Ordinal));
    }

    [Fact]
    public void Redact_HidesSecretValuesOnly()
    {
        var spec = Valid() with { Env = [EnvVar.Secret("TOKEN", "abc"), new EnvVar("MODE", "fast")] };

        var redacted = spec.Redact();

        Assert.Equal([EnvVar.Redacted, "fast"], redacted.Env.Select(e => e.Value));
        Assert.Equal("abc", spec.Env[0].Value);
        Assert.DoesNotContain("abc", spec.ToString(), StringComparison.Ordinal);
        Assert.DoesNotContain("abc", spec.Env[0].ToString(), StringComparison.Ordinal);
    }
}
