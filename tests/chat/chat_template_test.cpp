// Chat templates of five real model packages rendered by l2kv's Jinja interpreter against
// @huggingface/jinja on a conversation set (system or not, generation prompt or not, tools,
// tool calls and responses, reasoning, multi-part content, a role-alternation error).
#include "l2kv/chat/chat_template.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "l2kv/chat/jinja_parser.h"
#include "l2kv/core/error.h"
#include "l2kv/tokenizer/tokenizer.h"

namespace l2kv {
namespace {

const std::filesystem::path kPackages = L2KV_TOKENIZER_PACKAGES;
const std::filesystem::path kOracle = L2KV_TOKENIZER_ORACLE;
const std::filesystem::path kTests = L2KV_TEST_SOURCE_DIR;

nlohmann::ordered_json read_json(const std::filesystem::path& path) {
  std::ifstream f(path);
  if (!f) throw Error("missing " + path.string() + ": run scripts/tokenizer_test_data.sh");
  return nlohmann::ordered_json::parse(f);
}

// Where @huggingface/jinja (JavaScript) is more lenient than Python's Jinja, which
// transformers uses: l2kv follows Python and rejects the input.
const std::set<std::pair<std::string, std::string>> kPythonSemantics = {
    // '<｜User｜>' + a list: TypeError in Python; JS joins the list's JSON.
    {"deepseek_v3", "gemma_parts"},
};

class ChatTemplateOracle : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatTemplateOracle, RendersLikeHuggingFaceJinja) {
  const std::string name = GetParam();
  const auto config =
      read_json(kPackages / ("tokenizer-" + name) / "models" / "tokenizer_config.json");
  const auto token = [&](const char* key) -> std::string {
    if (!config.contains(key) || config[key].is_null()) return "";
    return config[key].is_string() ? config[key].get<std::string>()
                                   : config[key]["content"].get<std::string>();
  };
  const ChatTemplate chat(config["chat_template"].get<std::string>(), token("bos_token"),
                          token("eos_token"));
  const auto conversations = read_json(kTests / "chat" / "conversations.json");
  const auto oracle = read_json(kOracle / ("chat_" + name + ".json"));
  ASSERT_EQ(conversations.size(), oracle.size());
  int agree = 0;
  for (size_t i = 0; i < conversations.size(); ++i) {
    const auto& c = conversations[i];
    const std::string conv = c["name"];
    ChatRequest request;
    request.messages = c["messages"];
    request.add_generation_prompt = c["add_generation_prompt"];
    if (c.contains("tools")) request.tools = c["tools"];
    if (c.contains("extra")) request.extra = c["extra"];
    const bool oracle_error = oracle[i].contains("error");
    const bool expect_error = oracle_error || kPythonSemantics.count({name, conv});
    std::string output;
    bool error = false;
    try {
      output = chat.render(request);
    } catch (const Error& e) {
      error = true;
      output = e.what();
    }
    EXPECT_EQ(error, expect_error) << name << " / " << conv << ": " << output;
    if (!error && !expect_error) {
      EXPECT_EQ(output, oracle[i]["output"].get<std::string>()) << name << " / " << conv;
      agree += output == oracle[i]["output"].get<std::string>();
    } else {
      agree += error == oracle_error;
    }
  }
  std::printf("%s: %d of %zu conversations agree with @huggingface/jinja\n", name.c_str(), agree,
              conversations.size());
}

INSTANTIATE_TEST_SUITE_P(RealTemplates, ChatTemplateOracle,
                         ::testing::Values("llama3_1", "qwen3", "gemma3", "deepseek_v3"));

TEST(ChatTemplate, DefaultTemplateForModelsWithout) {
  const Tokenizer llama2 = Tokenizer::from_folder(kPackages / "tokenizer-llama2" / "models");
  ASSERT_TRUE(llama2.chat_template().empty());
  const ChatTemplate chat = ChatTemplate::for_tokenizer(llama2);
  ChatRequest r;
  r.messages = nlohmann::ordered_json::parse(R"([{"role": "system", "content": "Be kind."},
      {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}])");
  EXPECT_EQ(chat.render(r),
            "<s>[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST]");
  r.messages = nlohmann::ordered_json::parse(R"([{"role": "tool", "content": "x"}])");
  EXPECT_THROW(chat.render(r), Error);
}

// Where the template comes from: chat_template.jinja (or chat_template.json) beside a
// tokenizer_config.json without one, as transformers saves them since 4.43; a list of named
// templates ("default", and "tool_use" for requests with tools); anything else is an error
// naming the file and field, not a silent fall back to the default template.
TEST(ChatTemplate, TemplateFilesAndNamedTemplates) {
  const std::filesystem::path source = kPackages / "tokenizer-llama3_1" / "models";
  if (!std::filesystem::exists(source / "tokenizer.json"))
    GTEST_SKIP() << "run scripts/tokenizer_test_data.sh";
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("l2kv_chat_files_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(source / "tokenizer.json", dir / "tokenizer.json");
  const auto write = [&](const char* name, const std::string& text) {
    std::ofstream(dir / name) << text;
  };
  const auto render = [&](bool tools) {
    ChatRequest r;
    r.messages = nlohmann::ordered_json::parse(R"([{"role": "user", "content": "Hi"}])");
    if (tools) r.tools = nlohmann::ordered_json::parse(R"([{"type": "function"}])");
    return ChatTemplate::for_tokenizer(Tokenizer::from_folder(dir)).render(r);
  };
  write("tokenizer_config.json", R"({"bos_token": "<|begin_of_text|>"})");
  write("chat_template.jinja", "J{{ messages[0].content }}");
  EXPECT_EQ(render(false), "JHi");
  std::filesystem::remove(dir / "chat_template.jinja");
  write("chat_template.json", R"({"chat_template": "S{{ messages[0].content }}"})");
  EXPECT_EQ(render(false), "SHi");
  std::filesystem::remove(dir / "chat_template.json");
  // The config's own template wins over a file beside it.
  write("chat_template.jinja", "J");
  write("tokenizer_config.json", R"({"chat_template": "C"})");
  EXPECT_EQ(render(false), "C");
  std::filesystem::remove(dir / "chat_template.jinja");
  write("tokenizer_config.json", R"({"chat_template": [{"name": "tool_use", "template": "T"},
      {"name": "default", "template": "D"}]})");
  EXPECT_EQ(render(false), "D");
  EXPECT_EQ(render(true), "T");
  for (const char* bad :
       {R"({"chat_template": 42})", R"({"chat_template": {}})",
        R"({"chat_template": [{"name": "a", "template": "A"},
                              {"name": "b", "template": "B"}]})",
        R"([])", R"("text")", R"({"bos_token": {"content": 5}})", R"({"eos_token": 7})"}) {
    write("tokenizer_config.json", bad);
    try {
      Tokenizer::from_folder(dir);
      ADD_FAILURE() << bad << " was taken";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos) << e.what();
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(ChatTemplate, UnsupportedConstructsFailAtLoad) {
  for (const char* source :
       {"{% macro m() %}x{% endmacro %}", "{{ x | wordwrap }}",
        "{% if x is divisibleby 3 %}{% endif %}", "{{ x.format(1) }}", "{{ cycler(1) }}",
        "{% if x %}unterminated", "{{ 'open", "{% set x %}y{% endset %}"}) {
    EXPECT_THROW(ChatTemplate(source, "", ""), Error) << source;
  }
}

TEST(ChatTemplate, LanguageBasics) {
  const auto render = [](const std::string& source, const char* messages = "[]") {
    ChatRequest r;
    r.messages = nlohmann::ordered_json::parse(messages);
    return ChatTemplate(source, "<s>", "</s>").render(r);
  };
  EXPECT_EQ(render("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 2 + 3 * 4 }} {{ 'a' ~ 1 }}"),
            "3 -4 1 14 a1");
  EXPECT_EQ(render("{{ [1, 2, 3, 4][::-1] }} {{ 'hello'[1:3] }} {{ [1, 2][-1] }}"),
            "[4, 3, 2, 1] el 2");
  // Strings are sequences of characters, as in Python: no UTF-8 sequence is cut.
  EXPECT_EQ(render("{{ 'h\u00e9llo'[:2] }}|{{ '\u65e5\u672c\u8a9e\u30c6'[:3] }}|"
                   "{{ 'a\u00f1b'|first }}{{ 'a\u00f1b'[1] }}{{ 'a\u00f1b'[-1] }}|"
                   "{{ 'a\u00f1b'|reverse }}|{% for c in 'a\u00f1' %}[{{ c }}]{% endfor %}|"
                   "{{ 'a\u00f1b'[::-1] }}|{{ 'a\u00f1b'|last }}"),
            "h\u00e9|\u65e5\u672c\u8a9e|a\u00f1b|b\u00f1a|[a][\u00f1]|b\u00f1a|b");
  EXPECT_EQ(render("{% for x in [1, 2, 3] if x != 2 %}{{ loop.index }}:{{ x }}{% if not loop.last "
                   "%},{% endif %}{% endfor %}"),
            "1:1,2:3");
  EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i "
                   "%}{% endfor %}{{ ns.n }}"),
            "6");
  EXPECT_EQ(
      render("{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
      "012");
  EXPECT_EQ(render("{{ {'b': 1, 'a': [true, none, 'x\"y']} | tojson }}"),
            "{\"b\": 1, \"a\": [true, null, \"x\\\"y\"]}");
  EXPECT_EQ(
      render("{{ x | default('d') }} {{ 'a,b,,c'.split(',') | length }} {{ '  t  '.strip() }}"),
      "d 4 t");
  EXPECT_EQ(render("{%- if messages | length > 0 -%} yes {%- else -%} no {%- endif %}",
                   R"([{"role": "user"}])"),
            "yes");
  EXPECT_THROW(render("{{ raise_exception('stop here') }}"), Error);
}

// {{ value }} prints Python's str(): lists and dicts as their repr() (strings in single quotes
// unless they hold one and no double quote, escapes for what is not printable), floats in their
// shortest round-trip digits; tojson writes floats as json.dumps does. The expected strings are
// Python 3.11's.
TEST(ChatTemplate, PrintsValuesAsPython) {
  const auto render = [](const std::string& source, const nlohmann::ordered_json& message) {
    ChatRequest r;
    r.messages = nlohmann::ordered_json::array({message});
    return ChatTemplate(source, "<s>", "</s>").render(r);
  };
  nlohmann::ordered_json m = {{"role", "user"}, {"content", "x"}};
  m["v"] = {"a", "it's", "say \"hi\"", "both ' and \""};
  EXPECT_EQ(render("{{ messages[0].v }}", m), R"(['a', "it's", 'say "hi"', 'both \' and "'])");
  m["v"] = {{{"k", {1, 2.5, nullptr, true}}, {"n", {{"x", "y"}}}}};
  EXPECT_EQ(render("{{ messages[0].v }}|{{ messages[0].v[0] }}", m),
            "[{'k': [1, 2.5, None, True], 'n': {'x': 'y'}}]|{'k': [1, 2.5, None, True], 'n': "
            "{'x': 'y'}}");
  // A dict's pairs are tuples: printed in parentheses, unequal to lists.
  EXPECT_EQ(render("{% set d = {'b': [2], 'a': 1} %}{% for item in d.items() %}{{ item }}"
                   "{% endfor %}|{{ d|dictsort }}|{{ (d.items()|list)[0] == ['b', [2]] }}|"
                   "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|"
                   "{{ d.items()|list|length }}|{{ d|dictsort|first|first }}",
                   m),
            "('b', [2])('a', 1)|[('a', 1), ('b', [2])]|False|b=[2];a=1;|2|a");
  // A namespace prints as Jinja's Namespace repr, inside a list too.
  EXPECT_EQ(render("{% set ns = namespace(a=1, b='x') %}{{ ns }}|{{ [ns] }}", m),
            "<Namespace {'a': 1, 'b': 'x'}>|[<Namespace {'a': 1, 'b': 'x'}>]");
  m["v"] = {"tab\there\nnl \\ \u0007 \u00e9 \u200b \U0001F600 \u007f \u00a0 \u2028"};
  EXPECT_EQ(render("{{ messages[0].v }}", m),
            "['tab\\there\\nnl \\\\ \\x07 \u00e9 \\u200b \U0001F600 \\x7f \\xa0 \\u2028']");
  // Bytes that are not UTF-8 (an overlong quote, a sequence past U+10FFFF), each as \xhh.
  EXPECT_EQ(render("{{ ['a\xc0\xa7"
                   "b\xf4\x90\x80\x80'] }}",
                   m),
            "['a\\xc0\\xa7b\\xf4\\x90\\x80\\x80']");
  m["v"] = {0.1,  1e16, 1e15,          0.00001, 0.0001, 2.5e-7,
            -0.0, 1.0,  123456789.125, 1e300,   5e-324, 1.7976931348623157e308};
  EXPECT_EQ(render("{% for x in messages[0].v %}{{ x }} {% endfor %}", m),
            "0.1 1e+16 1000000000000000.0 1e-05 0.0001 2.5e-07 -0.0 1.0 123456789.125 1e+300 "
            "5e-324 1.7976931348623157e+308 ");
  EXPECT_EQ(render("{{ messages[0].v | tojson }}", m),
            "[0.1, 1e+16, 1000000000000000.0, 1e-05, 0.0001, 2.5e-07, -0.0, 1.0, 123456789.125, "
            "1e+300, 5e-324, 1.7976931348623157e+308]");
  EXPECT_EQ(render("{{ messages[0].v[0] ~ '|' ~ [messages[0].v[0]] ~ '|' ~ messages[0].role }}", m),
            "0.1|[0.1]|user");
  // bool is an int in arithmetic and ordering; ~ and printing keep True.
  EXPECT_EQ(render("{{ 'ab' * true }}|{{ 'ab' * false }}|{{ true + true }}|{{ 2.5 * true }}|"
                   "{{ false < 1 }}|{{ true ~ 1 }}|{{ [true] }}",
                   m),
            "ab||2|2.5|True|True1|[True]");
  EXPECT_EQ(
      render("{{ true == 1 }}|{{ 1.0 == true }}|{{ 1 in [true] }}|{{ false != 0 }}|"
             "{{ -true }}|{{ true|int }}|{{ true|float }}|{{ true|abs }}|{{ true == 'True' }}",
             m),
      "True|True|True|False|-1|1|1.0|1|False");
}

// Case changes and string repetition as Python makes them, beyond ASCII.
TEST(ChatTemplate, CaseAndRepetitionAsPython) {
  const auto render = [](const std::string& source) {
    ChatRequest r;
    r.messages = nlohmann::ordered_json::array();
    return ChatTemplate(source, "<s>", "</s>").render(r);
  };
  EXPECT_EQ(render("{{ 'stra\u00dfe'|upper }} {{ '\u0391\u0392\u0393'|lower }} "
                   "{{ '\u00c9COLE'.lower() }} {{ '\u00e9cole'.upper() }}"),
            "STRASSE \u03b1\u03b2\u03b3 \u00e9cole \u00c9COLE");
  EXPECT_EQ(render("{{ 'hello wORLD'|capitalize }} {{ '\u00e9LAN'.capitalize() }}"),
            "Hello world \u00c9lan");
  // str.title(): after any uncased character; Jinja's title filter: after '-', spaces and
  // brackets only.
  EXPECT_EQ(render("{{ \"they're bill's-x a1b\".title() }}|{{ \"they're bill's-x a1b\"|title }}"),
            "They'Re Bill'S-X A1B|They're Bill's-X A1b");
  EXPECT_EQ(render("{{ '\u00df'.title() }} {{ '\u00e9t\u00e9 (\u00e0 [la] <plage>'|title }}"),
            "Ss \u00c9t\u00e9 (\u00c0 [La] <Plage>");
  EXPECT_EQ(
      render("{{ '-' * 3 }}{{ 2 * 'ab' }}{{ 'x' * 0 }}{{ 'y' * -2 }}|{{ 'a\u00f1'|list|length }}"
             "{{ ('a\u00f1'|list)[1] }}"),
      "---abab|2\u00f1");
  EXPECT_THROW(render("{{ 'ab' * 100000000 }}"), Error);  // past the 16 MiB string bound
  // A capital sigma ending a word lower-cases to final sigma, in the context Python gives it:
  // the whole string for capitalize and str.title(), each piece after its first character for
  // Jinja's title filter.
  EXPECT_EQ(
      render("{{ '\u039f\u0394\u039f\u03a3'|capitalize }} {{ '\u0391\u03a3'.title() }} "
             "{{ '\u03a3\u0391\u03a3 \u03a3\u0391\u03a3'|title }} {{ '\u0391\u03a3'|lower }}"),
      "\u039f\u03b4\u03bf\u03c2 \u0391\u03c2 \u03a3\u03b1\u03c2 \u03a3\u03b1\u03c2 "
      "\u03b1\u03c2");
  // Characters that are both case-ignorable and cased (U+02B0, U+0345) are skipped when the
  // sigma looks for a cased neighbour, as Python skips them (expected strings: Python 3.11).
  EXPECT_EQ(
      render("{{ '\u02b0\u03a3'|lower }} {{ 'A\u03a3\u02b0'|lower }} "
             "{{ '\u0391\u03a3\u0345'.lower() }} {{ 'A\u03a3\u02b0'|capitalize }} "
             "{{ '\u02b0\u03a3 A\u03a3\u02b0'.title() }} {{ 'A\u03a3\u02b0\xff'|lower }}"),
      "\u02b0\u03c3 a\u03c2\u02b0 \u03b1\u03c2\u0345 A\u03c2\u02b0 \u02b0\u03c3 A\u03c2\u02b0 "
      "a\u03c2\u02b0\xff");
  // A byte that is not UTF-8 is kept by every case change, as capitalize and title keep it.
  EXPECT_EQ(render("{{ 'a\xff"
                   "b\u00e9'|upper }}|{{ 'A\xff"
                   "B\u00c9'|lower }}|{{ '\xff"
                   "ab'|capitalize }}"),
            "A\xff"
            "B\u00c9|a\xff"
            "b\u00e9|\xff"
            "ab");
}

}  // namespace
}  // namespace l2kv
