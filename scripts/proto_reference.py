"""Render ``docs/proto.md``, the proto reference, from the comments of the ``.proto`` files.

Usage: ``python scripts/proto_reference.py [OUTPUT]`` (default ``docs/proto.md``). protoc (grpc_tools)
compiles ``proto/`` into a descriptor set with source info; every service, method, message, field, enum
and enum value is written with its comment. The freshness test renders into a temporary file and
compares. Never edit ``docs/proto.md`` by hand: change the comments in the proto and run this script.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
DEFAULT_OUTPUT = ROOT / "docs" / "proto.md"

# Field numbers of descriptor.proto, as they appear in SourceCodeInfo.Location.path.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE, FILE_SYNTAX = 4, 5, 6, 12
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM, MESSAGE_ONEOF = 2, 3, 4, 8
ENUM_VALUE, SERVICE_METHOD = 2, 2

SCALARS = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in descriptor_pb2.FieldDescriptorProto.Type.items()
    if name not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
}


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """Compile every proto file with its source info (comments and locations)."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "descriptors.pb"
        args = ["protoc", f"-I{PROTO_ROOT}", "--include_source_info", f"--descriptor_set_out={out}", *protos]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Each element's comment (leading and trailing joined), keyed by its source path."""
    found: dict[tuple[int, ...], str] = {}
    for location in file.source_code_info.location:
        parts = [location.leading_comments, location.trailing_comments]
        text = "\n".join(_dedent(part) for part in parts if part.strip())
        if text:
            found[tuple(location.path)] = text
        if tuple(location.path) == (FILE_SYNTAX,):  # the file's own comment sits above `syntax`
            found[()] = "\n\n".join(_dedent(part) for part in [*location.leading_detached_comments, location.leading_comments] if part.strip())
    return found


def _dedent(comment: str) -> str:
    """A comment's lines without the single space protoc keeps after ``//``."""
    lines = [line[1:] if line.startswith(" ") else line for line in comment.strip("\n").split("\n")]
    return "\n".join(lines).strip()


def _escape(text: str) -> str:
    """Comment text as Markdown: ``<`` and ``>`` outside code spans escaped, pipes escaped everywhere."""
    pieces = text.split("`")
    for index in range(0, len(pieces), 2):  # even pieces are outside code spans
        pieces[index] = pieces[index].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    return "`".join(pieces).replace("|", "\\|")


def _cell(text: str) -> str:
    """Comment text fit for one table cell: one line."""
    return _escape(" ".join(text.split()))


def _paragraphs(text: str) -> str:
    """Comment text as Markdown paragraphs: lines of one paragraph joined, indented lines kept as a text block."""
    out: list[str] = []
    for block in text.split("\n\n"):
        prose: list[str] = []
        code: list[str] = []
        for line in block.split("\n"):
            if line.startswith("  "):
                code.append(line[2:])
                continue
            if code:
                prose.append("\n```text\n" + "\n".join(code) + "\n```\n")
                code = []
            prose.append(_escape(" ".join(line.split())))
        if code:
            prose.append("\n```text\n" + "\n".join(code) + "\n```\n")
        out.append("\n".join(prose).strip())
    return "\n\n".join(part for part in out if part)


def _type_name(field: descriptor_pb2.FieldDescriptorProto, package: str) -> str:
    """A field's type, linked to its section when it is a message or enum of this package."""
    if field.type in (field.TYPE_MESSAGE, field.TYPE_ENUM):
        name = field.type_name.lstrip(".")
        if name.startswith(package + ".") and "." not in name.removeprefix(package + "."):
            return _link(field.type_name, package)
        return "`" + name + "`"
    return "`" + SCALARS[field.type] + "`"


def render_service(service: descriptor_pb2.ServiceDescriptorProto, path: tuple[int, ...], notes: dict[tuple[int, ...], str], package: str) -> list[str]:
    """A service: its comment and one table row per method."""
    lines = [f"## Service `{service.name}`", "", f"Full name: `{package}.{service.name}`.", ""]
    if path in notes:
        lines += [_paragraphs(notes[path]), ""]
    lines += ["| method | request | response | what it does |", "|---|---|---|---|"]
    for index, method in enumerate(service.method):
        request = ("stream " if method.client_streaming else "") + _link(method.input_type, package)
        response = ("stream " if method.server_streaming else "") + _link(method.output_type, package)
        lines.append(f"| `{method.name}` | {request} | {response} | {_cell(notes.get(path + (SERVICE_METHOD, index), ''))} |")
    return lines + [""]


def _link(type_name: str, package: str) -> str:
    """A message type name linked to its section."""
    short = type_name.lstrip(".").removeprefix(package + ".")
    return f"[`{short}`](#{short.lower()})"


def render_message(message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], notes: dict[tuple[int, ...], str], package: str) -> list[str]:
    """A message: its comment and one table row per field (a oneof's fields say which oneof)."""
    lines = [f"### {message.name}", ""]
    if path in notes:
        lines += [_paragraphs(notes[path]), ""]
    if not message.field:
        return lines + ["No fields.", ""]
    lines += ["| field | number | type | description |", "|---|---:|---|---|"]
    for index, field in enumerate(message.field):
        kind = _type_name(field, package)
        if field.label == field.LABEL_REPEATED:
            kind = "repeated " + kind
        note = _cell(notes.get(path + (MESSAGE_FIELD, index), ""))
        if field.HasField("oneof_index") and not field.proto3_optional:
            note = f"One of `{message.oneof_decl[field.oneof_index].name}`. " + note
        lines.append(f"| `{field.name}` | {field.number} | {kind} | {note} |")
    return lines + [""]


def render_enum(enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], notes: dict[tuple[int, ...], str]) -> list[str]:
    """An enum: its comment and one table row per value."""
    lines = [f"### {enum.name}", ""]
    if path in notes:
        lines += [_paragraphs(notes[path]), ""]
    lines += ["| value | number | description |", "|---|---:|---|"]
    for index, value in enumerate(enum.value):
        lines.append(f"| `{value.name}` | {value.number} | {_cell(notes.get(path + (ENUM_VALUE, index), ''))} |")
    return lines + [""]


def render(files: descriptor_pb2.FileDescriptorSet) -> str:
    """The whole reference page."""
    lines = [
        "# Proto reference",
        "",
        "<!-- Generated by scripts/proto_reference.py from the comments in proto/. Do not edit: change the proto and run the script. -->",
        "",
    ]
    for file in files.file:
        notes = comments(file)
        lines += [f"File `proto/{file.name}`, package `{file.package}`.", ""]
        if () in notes:
            lines += [_paragraphs(notes[()]), ""]
        for index, service in enumerate(file.service):
            lines += render_service(service, (FILE_SERVICE, index), notes, file.package)
        lines += ["## Messages", ""]
        for index, message in enumerate(file.message_type):
            lines += render_message(message, (FILE_MESSAGE, index), notes, file.package)
        lines += ["## Enums", ""]
        for index, enum in enumerate(file.enum_type):
            lines += render_enum(enum, (FILE_ENUM, index), notes)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(output: Path = DEFAULT_OUTPUT) -> Path:
    """Write the reference to ``output``; return its path."""
    output.write_text(render(descriptor_set()))
    return output


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
