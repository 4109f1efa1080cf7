using System.Text;
using JobRunner.Tests.Support;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Tests.Definitions;

public sealed class JobDefinitionsTests : IAsyncDisposable
{
    private readonly TestHost _host = new(r => r.AddDefinitions(w => w.Retry = RetryPolicy.Fixed(TimeSpan.Zero, 2)));

    public ValueTask DisposeAsync() => _host.DisposeAsync();

    private IJobDefinitions Definitions => _host.Services.GetRequiredService<IJobDefinitions>();

    private static JobDefinition Greeter(string name = "greeter") => new()
    {
        Name = name,
        Aliases = [name + "-alias"],
        Spec = new ContainerSpec
        {
            Image = "alpine:3.20",
            Command = ["/bin/sh", "-c", "echo \"${greeting}, $WHO (x${times})\"; exit ${code}"],
            Env = [new EnvVar("WHO", "${who}"), EnvVar.Secret("TOKEN", "top-secret")],
        },
        Parameters =
        [
            new DefinitionParameter("greeting", Default: "hello"),
            new DefinitionParameter("who", Required: true) { Pattern = "[a-z]+" },
            new DefinitionParameter("times", ParameterType.Integer, Default: "1") { Min = 1, Max = 5 },
            new DefinitionParameter("code", ParameterType.Integer, Default: "0") { AllowedValues = ["0", "1", "3"] },
        ],
    };

    [Fact]
    public async Task Create_AssignsVersion1_AndReadsRedactSecrets()
    {
        var created = await Definitions.CreateAsync(Greeter());
        var read = await Definitions.GetAsync("greeter");
        var byAlias = await Definitions.GetAsync("greeter-alias");

        Assert.Equal(1, created.Version);
        Assert.Equal(EnvVar.Redacted, read!.Spec.Env[1].Value);
        Assert.Equal("greeter", byAlias!.Name);
        Assert.Equal(["greeter"], (await Definitions.ListAsync()).Select(d => d.Name));
        Assert.All(await Definitions.ListAsync(), d => Assert.Equal(EnvVar.Redacted, d.Spec.Env[1].Value));
    }

    [Fact]
    public async Task Create_Invalid_ListsEveryProblem()
    {
        var bad = Greeter("bad name") with
        {
            Spec = Greeter().Spec with { Args = ["${undeclared}"], Resources = new ContainerResources { MemoryMb = 1 } },
            Parameters = [new DefinitionParameter("times", ParameterType.Integer, Default: "many"), new DefinitionParameter("1x")],
        };

        var e = await Assert.ThrowsAsync<JobValidationException>(() => Definitions.CreateAsync(bad).AsTask());

        Assert.Contains(e.Errors, x => x.Contains("Definition name 'bad name' is not valid", StringComparison.Ordinal));
        Assert.Contains(e.Errors, x => x.Contains("'many' is not a whole number", StringComparison.Ordinal));
        Assert.Contains(e.Errors, x => x.Contains("Parameter name '1x' is not valid", StringComparison.Ordinal));
        Assert.Contains(e.Errors, x => x.Contains("${undeclared}", StringComparison.Ordinal));
        Assert.Contains(e.Errors, x => x.Contains("MemoryMb is 1", StringComparison.Ordinal));
        Assert.Empty(await Definitions.ListAsync());
    }

    [Fact]
    public async Task Create_NameTaken_IsRejected()
    {
        await Definitions.CreateAsync(Greeter());

        var e = await Assert.ThrowsAsync<JobValidationException>(() => Definitions.CreateAsync(Greeter()).AsTask());

        Assert.Contains("already exists", Assert.Single(e.Errors), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Update_NewVersion_OldVersionStaysReadable_StaleExpectedVersionRejected()
    {
        await Definitions.CreateAsync(Greeter());

        var v2 = await Definitions.UpdateAsync(Greeter() with { Description = "v2" }, expectedVersion: 1);
        var stale = await Assert.ThrowsAsync<JobValidationException>(() => Definitions.UpdateAsync(Greeter(), expectedVersion: 1).AsTask());

        Assert.Equal(2, v2.Version);
        Assert.Null((await Definitions.GetAsync("greeter", version: 1))!.Description);
        Assert.Equal("v2", (await Definitions.GetAsync("greeter"))!.Description);
        Assert.Contains("is at version 2, not 1", Assert.Single(stale.Errors), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Delete_RemovesNameAndAliases()
    {
        await Definitions.CreateAsync(Greeter());

        Assert.True(await Definitions.DeleteAsync("greeter"));

        Assert.Null(await Definitions.GetAsync("greeter"));
        Assert.Null(await Definitions.GetAsync("greeter-alias"));
        Assert.False(await Definitions.DeleteAsync("greeter"));
    }

    [Fact]
    public async Task Preview_ResolvesParametersAndDefaults_WithoutRunning()
    {
        await Definitions.CreateAsync(Greeter());

        var preview = await Definitions.PreviewAsync("greeter-alias", new Dictionary<string, string> { ["who"] = "ada", ["times"] = "3" });

        Assert.Equal("echo \"hello, $WHO (x3)\"; exit 0", preview.Spec.Command[2]);
        Assert.Equal([("WHO", "ada"), ("TOKEN", EnvVar.Redacted)], preview.Spec.Env.Select(e => (e.Name, e.Value)));
        Assert.Equal(1000, preview.Spec.Resources.CpuMillicores);
        Assert.Equal("hello", preview.Parameters["greeting"]);
        Assert.Empty((await _host.Client.ListAsync(new JobQuery())).Items);
    }

    [Fact]
    public async Task Run_BadParameters_ListsEveryProblemAndSubmitsNothing()
    {
        await Definitions.CreateAsync(Greeter());

        var e = await Assert.ThrowsAsync<JobValidationException>(() => Definitions.RunAsync("greeter", new Dictionary<string, string> { ["times"] = "9", ["code"] = "2", ["extra"] = "x" }).AsTask());

        Assert.Equal(4, e.Errors.Count);
        Assert.Contains(e.Errors, x => x.Contains("no parameter 'extra'", StringComparison.Ordinal));
        Assert.Contains(e.Errors, x => x.Contains("9 is outside 1–5", StringComparison.Ordinal));
        Assert.Contains(e.Errors, x => x.Contains("'2' is not one of: 0, 1, 3", StringComparison.Ordinal));
        Assert.Contains(e.Errors, x => x.Contains("'who' is required", StringComparison.Ordinal));
        Assert.Empty((await _host.Client.ListAsync(new JobQuery())).Items);
    }

    [Fact]
    public async Task Run_UnknownDefinition_NamesTheFix()
    {
        var e = await Assert.ThrowsAsync<JobValidationException>(() => Definitions.RunAsync("nope").AsTask());

        Assert.Contains("Definition 'nope' does not exist", Assert.Single(e.Errors), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Run_ExecutesAsAProcess_RecordsExitCodeAndLogs_KeepsSecretsOutOfTheJob()
    {
        await Definitions.CreateAsync(Greeter());
        await _host.StartAsync();

        var ok = await Definitions.RunAsync("greeter", new Dictionary<string, string> { ["who"] = "ada", ["greeting"] = "hi" }, new DefinitionRunOptions { Tenant = "acme" });
        var failing = await Definitions.RunAsync("greeter", new Dictionary<string, string> { ["who"] = "bob", ["code"] = "3" });
        var succeeded = await _host.WaitForStateAsync(ok.Id, JobState.Succeeded);
        var failed = await _host.WaitForStateAsync(failing.Id, JobState.Failed);

        Assert.Equal(0, Assert.Single(succeeded.Attempts).ExitCode);
        Assert.Equal(3, Assert.Single(failed.Attempts).ExitCode);
        Assert.Equal("acme", succeeded.Tenant);
        Assert.Equal("greeter", succeeded.Request.Labels["jobrunner.io/definition"]);
        Assert.DoesNotContain("top-secret", Encoding.UTF8.GetString(succeeded.Request.Input.Span), StringComparison.Ordinal);
        var logs = await _host.Client.ReadLogsAsync(ok.Id);
        Assert.Contains(logs.Entries, l => l.Message == "hi, ada (x1)" && l.Stream == LogStream.Output);
        var history = await _host.Client.ListAsync(new JobQuery { Labels = new Dictionary<string, string> { ["jobrunner.io/definition"] = "greeter" } });
        Assert.Equal([0, 3], history.Items.Select(j => j.Attempts[^1].ExitCode!.Value));
    }

    [Fact]
    public async Task Run_DefinitionDeletedBeforeItRuns_FailsPermanently()
    {
        await Definitions.CreateAsync(Greeter());
        var run = await Definitions.RunAsync("greeter", new Dictionary<string, string> { ["who"] = "ada" });
        await Definitions.DeleteAsync("greeter");
        await _host.StartAsync();

        var job = await _host.WaitForStateAsync(run.Id, JobState.Failed);

        Assert.Contains("no longer exists", job.LastError, StringComparison.Ordinal);
        Assert.Single(job.Attempts);
    }

    [Fact]
    public async Task Run_DefinitionDeletedAndCreatedAgainBeforeItRuns_FailsInsteadOfRunningTheNewOne()
    {
        await Definitions.CreateAsync(Greeter());
        var run = await Definitions.RunAsync("greeter", new Dictionary<string, string> { ["who"] = "ada" });
        await Definitions.DeleteAsync("greeter");
        _host.Time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(1, (await Definitions.CreateAsync(Greeter() with { Description = "another" })).Version);
        await _host.StartAsync();

        var job = await _host.WaitForStateAsync(run.Id, JobState.Failed);

        Assert.Contains("deleted and created again", job.LastError, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Create_NullListsOrANonFiniteNumber_AreValidationErrors()
    {
        var e = await Assert.ThrowsAsync<JobValidationException>(() => Definitions.CreateAsync(Greeter() with { Aliases = null!, Parameters = null! }).AsTask());
        Assert.Contains(e.Errors, x => x.Contains("Aliases is null", StringComparison.Ordinal));
        Assert.Contains(e.Errors, x => x.Contains("Parameters is null", StringComparison.Ordinal));

        await Definitions.CreateAsync(Greeter() with { Parameters = [.. Greeter().Parameters, new DefinitionParameter("ratio", ParameterType.Number, Default: "1") { Min = 0, Max = 2 }] });
        var nan = await Assert.ThrowsAsync<JobValidationException>(() => Definitions.RunAsync("greeter", new Dictionary<string, string> { ["who"] = "ada", ["ratio"] = "NaN" }).AsTask());
        Assert.Contains(nan.Errors, x => x.Contains("'NaN' is not a finite number", StringComparison.Ordinal));
    }
}
